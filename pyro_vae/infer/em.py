"""Variational EM: alternate guide-only E-steps and model-only M-steps.

The ELBO L(x; phi, theta) = E_q_phi(z|x)[log p_theta(x, z) - log q_phi(z|x)] is a lower bound
on log p_theta(x) that is tight when q_phi(z|x) is the exact posterior. Variational EM raises it
by coordinate ascent:

    E-step:  phi   <- (approximately) argmax_phi   L(phi, theta)    theta fixed
    M-step:  theta <- one gradient step on         L(phi, theta)    phi fixed
                      (the theta-gradient of L is that of E_q[log p_theta(x, z)])

whereas SVI takes one joint step on (phi, theta). Every M-step here follows an E-step of several
guide-only updates on fresh minibatches (the encoder is amortized, so "fitting q" means fitting it
on the data, not on one batch), stopped by one of three rules (``--e-rule``):

- ``fixed``: exactly K guide steps (``--e-steps K``).
- ``converge``: until the mean loss over the last ``e_check`` inner steps is no lower than over
  the ``e_check`` before, at most ``e_max`` steps (He et al. 2019, "Lagging inference networks
  and posterior collapse", Algorithm 1's inner loop).
- ``aggressive``: ``converge`` while the mutual information I_q(x; z) on validation data keeps
  improving; after ``patience`` epochs without a new best, plain joint SVI steps (He et al.'s
  full method).

Each group has its own ``torch.optim.Adam`` and gradients are computed with
``backward(inputs=group)``: the frozen group neither changes nor accumulates ``.grad``
(``poutine.block`` would hide it from an optimizer but still fill its ``.grad``).

Under torchrun (:mod:`pyro_vae.distributed`) each E-step and M-step sums only its own group's
gradients over ranks, and the losses the ``converge`` rule compares are those summed over
ranks, so every rank takes the same number of inner steps; the ``aggressive`` rule uses rank
0's mutual information on every rank.
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from pyro_vae import distributed
from pyro_vae.infer.compiled import CompiledLoss
from pyro_vae.infer.objectives import Objective
from pyro_vae.infer.svi import KLWarmup, adam, epoch_loop, minibatch_step
from pyro_vae.models.base import LatentModel

__all__ = ["E_RULES", "EMTrainer", "run_inner_loop", "random_minibatch"]

E_RULES = ("fixed", "converge", "aggressive")


def run_inner_loop(
    step: Callable[[], float], rule: str, e_steps: int = 1, e_check: int = 10, e_max: int = 100
) -> int:
    """Call ``step()`` (one guide update, returning its loss) until ``rule`` stops; return count.

    ``fixed`` takes ``e_steps`` steps. ``converge`` (also the E-step of ``aggressive``) compares
    the mean loss of consecutive windows of ``e_check`` steps and stops after the first window
    whose mean is not lower than the previous one, or at ``e_max`` steps.
    """
    if rule == "fixed":
        for _ in range(e_steps):
            step()
        return e_steps
    previous, window, taken = math.inf, 0.0, 0
    while taken < e_max:
        window += step()
        taken += 1
        if taken % e_check == 0:
            mean = window / e_check
            if mean >= previous:
                break
            previous, window = mean, 0.0
    return taken


def random_minibatch(
    x: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Callable[[], torch.Tensor]:
    """A function drawing a fresh minibatch of ``x`` (without replacement within the batch)."""
    size = min(batch_size, x.shape[0])

    def draw() -> torch.Tensor:
        return x[torch.randperm(x.shape[0], generator=generator)[:size].to(x.device)]

    return draw


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Adam | None:
    return adam(params, lr) if params else None


class EMTrainer:
    """Trains a model (:class:`~pyro_vae.models.base.LatentModel`) by variational EM; the
    interface of ``SVITrainer``.

    Args:
        vae: the model and guide; ``guide_parameters()`` are phi, ``model_parameters()`` theta
            (decoder, prior, likelihood: any learnable prior is on the M-step side).
        objective: ``loss(model, guide, x, kl_weight)`` from :func:`pyro_vae.make_objective`.
        e_rule: ``fixed``, ``converge`` or ``aggressive`` (see the module docstring).
        e_steps: guide steps per E-step under ``fixed``.
        e_check: window of inner steps between convergence checks (``converge``).
        e_max: cap on inner steps per E-step (``converge``).
        patience: epochs without a new best validation MI before ``aggressive`` switches to SVI.
        e_lr: Adam learning rate of the E-step (phi).
        m_lr: Adam learning rate of the M-step (theta).
        kl_weight: outer step (M-step count) -> KL weight, as for SVI.
        mutual_info: the ``aggressive`` rule's progress measure, called after every epoch:
            the mutual information I_q(x; z) on validation data (:func:`pyro_vae.fit` passes
            :func:`~pyro_vae.evaluation.mutual_info.mutual_information` on ``--val-size``
            images). Passed in, so that the trainer does not depend on the evaluation layer.
        clip_norm: if given, each step's gradient norm (of the group it updates) is clipped.
        compile: take the E-, M- and joint steps by compiled graphs of the loss and the
            gradients of the group they update (:mod:`pyro_vae.infer.compiled`).
        report: where the compiled steps' one-line messages go (default: stderr).
    """

    def __init__(
        self,
        vae: LatentModel,
        objective: Objective,
        e_rule: str = "converge",
        e_steps: int = 1,
        e_check: int = 10,
        e_max: int = 100,
        patience: int = 1,
        e_lr: float = 1e-3,
        m_lr: float = 1e-3,
        kl_weight: Callable[[int], float] | None = None,
        mutual_info: Callable[[], float] | None = None,
        clip_norm: float | None = None,
        compile: bool = False,
        report: Callable[[str], None] | None = None,
    ) -> None:
        if e_rule not in E_RULES:
            raise ValueError(f"unknown E-step rule {e_rule!r}; choose from {', '.join(E_RULES)}")
        if min(e_steps, e_check, e_max, patience) <= 0:
            raise ValueError("e_steps, e_check, e_max and patience must be positive")
        if e_rule == "aggressive" and mutual_info is None:
            raise ValueError("the aggressive rule needs a validation measure (mutual_info)")
        vae.check_algo("em")
        self.vae = vae
        self.objective = objective
        self.e_rule = e_rule
        self.e_steps, self.e_check, self.e_max, self.patience = e_steps, e_check, e_max, patience
        self.kl_weight = kl_weight or KLWarmup()
        self.mutual_info = mutual_info
        self.clip_norm = clip_norm
        self.compiled = CompiledLoss(vae, objective, report) if compile else None
        self.guide_params = list(vae.guide_parameters())
        self.model_params = list(vae.model_parameters())
        self.e_optimizer = _adam(self.guide_params, e_lr)
        self.m_optimizer = _adam(self.model_params, m_lr)
        self.step_count = 0  # outer steps = M-steps, which also index the KL schedule
        self.encoder_updates = 0
        self.decoder_updates = 0
        self.inner_steps = 0  # E-step (guide-only) updates in the current epoch
        self.em_active = True  # False once ``aggressive`` has switched to joint SVI
        self.best_mi = -math.inf
        self.epochs_without_gain = 0
        self.last_mi: float | None = None

    # --- gradient steps on one group ----------------------------------------------------------
    def _update(self, x: torch.Tensor, guide: bool, model: bool) -> torch.Tensor:
        """One Adam step on the chosen groups; the other group is untouched, its .grad None.
        Returns the loss summed over ``x`` (over every rank's shard under torch.distributed)."""
        params = (self.guide_params if guide else []) + (self.model_params if model else [])
        optimizers = [
            opt
            for opt, chosen in ((self.e_optimizer, guide), (self.m_optimizer, model))
            if chosen and opt is not None
        ]
        kl_weight = self.kl_weight(self.step_count)
        for p in self.guide_params + self.model_params:
            p.grad = None
        if params:
            total = minibatch_step(
                self.vae,
                self.objective,
                x,
                kl_weight,
                params,
                optimizers,
                self.clip_norm,
                self.compiled,
            )
        else:
            loss = self.objective(self.vae.model, self.vae.guide, distributed.shard(x), kl_weight)
            total = torch.tensor(distributed.all_sum([loss.item()])[0]).to(loss)
        self.vae.after_update(model_updated=model)
        self.encoder_updates += int(guide)
        self.decoder_updates += int(model)
        return total

    def e_step(self, x: torch.Tensor, fresh: Callable[[], torch.Tensor] | None = None) -> int:
        """Guide-only updates, the first on ``x`` and the rest on ``fresh()`` minibatches
        (``x`` again when ``fresh`` is None), until the E-step rule stops; returns the count."""
        state = {"x": x}  # the batch of the next inner step

        def step() -> float:
            xb = state["x"]
            state["x"] = fresh() if fresh is not None else x
            return (self._update(xb, guide=True, model=False) / xb.shape[0]).item()

        taken = run_inner_loop(step, self.e_rule, self.e_steps, self.e_check, self.e_max)
        self.inner_steps += taken
        return taken

    def m_step(self, x: torch.Tensor) -> torch.Tensor:
        """One model-only (decoder, prior, likelihood) update on ``x``; returns the summed loss."""
        return self._update(x, guide=False, model=True)

    def step(
        self, x: torch.Tensor, fresh: Callable[[], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """An E-step then an M-step on ``x`` (joint SVI once ``aggressive`` has switched);
        returns the M-step's loss summed over ``x`` (detached)."""
        if self.em_active:
            self.e_step(x, fresh)
            loss = self.m_step(x)
        else:
            loss = self._update(x, guide=True, model=True)
        self.step_count += 1
        return loss

    # --- epochs -------------------------------------------------------------------------------
    def train_epoch(
        self,
        x: torch.Tensor,
        batch_size: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
        description: str = "",
        check: bool = True,
    ) -> float:
        """One pass of M-steps over ``x`` in shuffled minibatches (E-steps draw fresh ones from
        ``x``); returns the mean M-step loss per data point. Under ``aggressive``, ends by
        measuring validation MI and deciding whether to keep doing EM."""
        if check:  # fit checks its data once up front and passes check=False
            self.vae.check_data(x)
        self.vae.train()
        self.inner_steps = 0
        fresh = random_minibatch(x, batch_size, generator)
        loss = epoch_loop(
            lambda xb: self.step(xb, fresh),
            x,
            batch_size,
            generator,
            progress,
            description,
            status=lambda: {"inner": self.inner_steps},
        )
        if self.e_rule == "aggressive" and self.em_active:
            mi = self.mutual_info()
            self.update_aggressive(distributed.from_main(mi))  # every rank decides alike
        return loss

    def update_aggressive(self, mi: float) -> None:
        """Record an epoch's validation MI; stop EM after ``patience`` epochs without a best."""
        self.last_mi = mi
        if mi > self.best_mi:
            self.best_mi, self.epochs_without_gain = mi, 0
        else:
            self.epochs_without_gain += 1
            if self.epochs_without_gain >= self.patience:
                self.em_active = False

    def epoch_record(self) -> dict[str, float | int | None]:
        """Columns for ``metrics.csv``: cumulative updates per group and this epoch's E-steps."""
        return {
            "encoder_updates": self.encoder_updates,
            "decoder_updates": self.decoder_updates,
            "inner_steps": self.inner_steps,
            "val_mi": self.last_mi if self.e_rule == "aggressive" else None,
        }

    # --- checkpoints --------------------------------------------------------------------------
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers a learning-rate schedule scales (the E-step's and the M-step's)."""
        return [opt for opt in (self.e_optimizer, self.m_optimizer) if opt is not None]

    def state_dict(self) -> dict:
        return {
            "e_optimizer": self.e_optimizer.state_dict() if self.e_optimizer else None,
            "m_optimizer": self.m_optimizer.state_dict() if self.m_optimizer else None,
            "step_count": self.step_count,
            "encoder_updates": self.encoder_updates,
            "decoder_updates": self.decoder_updates,
            "em_active": self.em_active,
            "best_mi": self.best_mi,
            "epochs_without_gain": self.epochs_without_gain,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("e_optimizer", "m_optimizer"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        for name in (
            "step_count",
            "encoder_updates",
            "decoder_updates",
            "em_active",
            "best_mi",
            "epochs_without_gain",
        ):
            setattr(self, name, state[name])
