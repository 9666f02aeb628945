"""Stochastic variational inference: one joint gradient step on phi and theta per minibatch.

    for each minibatch x:
        loss = -ELBO(x; phi, theta) / |x|            # Pyro's differentiable loss, nats/datum
        (phi, theta) <- Adam step along -grad loss

The optimizer is a single ``torch.optim.Adam`` over two named parameter groups, ``guide`` (phi)
and ``model`` (theta), rather than ``pyro.optim``'s one optimizer per parameter; trainers that
update the groups separately (variational EM) reuse the same split. Every trainer builds its Adam
with :func:`adam`, which uses torch's fused kernel (one pass over all parameters per step, about
a tenth of a step's time saved on a 784-400-50 VAE on CPU; see docs/benchmarks.md).

Under ``torchrun`` (:mod:`pyro_vae.distributed`) a trainer's ``batch_size`` is the global
minibatch: each rank computes the loss of its shard of it and the gradients are summed over
ranks, so every rank takes the step one process would take on the whole minibatch.
"""

import math
import time
from collections.abc import Callable

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae import distributed
from pyro_vae.data.images import minibatches
from pyro_vae.errors import TrainingDiverged
from pyro_vae.infer.compiled import CompiledLoss
from pyro_vae.infer.objectives import Objective
from pyro_vae.models.base import LatentModel

__all__ = [
    "KLWarmup",
    "SVITrainer",
    "adam",
    "parameter_groups",
    "gradient_step",
    "apply_gradients",
    "minibatch_step",
    "epoch_loop",
]


class KLWarmup:
    """kl_weight = beta * min(1, (step + 1) / warmup_steps): a linear ramp, never exactly 0.

    ``poutine.scale`` requires a positive scale, hence the ramp starts at beta / warmup_steps.
    """

    def __init__(self, beta: float = 1.0, warmup_steps: int = 0) -> None:
        self.beta = beta
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.warmup_steps)


def adam(params: list[torch.nn.Parameter] | list[dict], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr)``, fused into one kernel when every parameter lives on a
    CPU or CUDA device (the same update rule, to floating-point rounding; torch's default is
    one loop of small kernels per parameter)."""
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    on_cpu_or_cuda = (p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.Adam(groups, lr=lr, fused=all(on_cpu_or_cuda))


def parameter_groups(vae: LatentModel) -> list[dict]:
    """The guide (phi) and model (theta) parameters as named optimizer groups."""
    return [
        {"name": "guide", "params": list(vae.guide_parameters())},
        {"name": "model", "params": list(vae.model_parameters())},
    ]


def gradient_step(
    loss: torch.Tensor,
    batch_size: int,
    params: list[torch.nn.Parameter],
    optimizers: list[torch.optim.Optimizer],
    clip_norm: float | None = None,
) -> torch.Tensor:
    """Backpropagate ``loss / batch_size`` into ``params`` only and step ``optimizers``
    (:func:`apply_gradients`); returns the loss summed over the minibatch (detached).

    ``backward(inputs=params)`` leaves every other parameter's ``.grad`` untouched (None), so a
    frozen group neither changes nor accumulates gradients.

    Under torch.distributed, ``loss`` is this rank's shard of a minibatch of ``batch_size``
    data points.
    """
    for p in params:
        p.grad = None
    (loss / batch_size).backward(inputs=params)
    return apply_gradients(loss, params, optimizers, clip_norm)


def apply_gradients(
    loss: torch.Tensor,
    params: list[torch.nn.Parameter],
    optimizers: list[torch.optim.Optimizer],
    clip_norm: float | None = None,
    norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Step ``optimizers`` along the gradients in ``params``' ``.grad`` (those of the loss per
    data point); returns ``loss``, the loss summed over the minibatch, detached.

    A non-finite loss or gradient norm raises :class:`TrainingDiverged` before any parameter
    moves. ``clip_norm`` rescales the gradient of ``params`` to at most that total norm.
    ``norm``: the gradients' total norm when the caller has it (a compiled step computes it in
    its graph), else it is computed here.

    Under torch.distributed the gradients and the loss are summed over ranks before the checks
    and the step (:func:`pyro_vae.distributed.all_reduce_gradients`), so every rank steps alike.
    """
    if distributed.active():  # a non-finite loss on any rank makes the summed loss non-finite
        loss = distributed.all_reduce_gradients(params, loss)
        norm = None  # of this rank's gradients only
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss.item()}")
    grads = [p.grad for p in params if p.grad is not None]
    if norm is None:  # clipping would rescale every gradient by 1: only check the norm
        norm = torch.nn.utils.get_total_norm(grads)
    if clip_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, clip_norm, norm)
    if not torch.isfinite(norm):
        raise TrainingDiverged(f"the gradient norm became {norm.item()}")
    for optimizer in optimizers:
        optimizer.step()
    return loss.detach()


def minibatch_step(
    vae: LatentModel,
    objective: Objective,
    x: torch.Tensor,
    kl_weight: float,
    params: list[torch.nn.Parameter],
    optimizers: list[torch.optim.Optimizer],
    clip_norm: float | None = None,
    compiled: CompiledLoss | None = None,
) -> torch.Tensor:
    """One step of ``optimizers`` along the gradient of ``objective``'s loss on the minibatch
    ``x`` (this rank's shard of it under torch.distributed) with respect to ``params``: by the
    compiled graph of ``compiled`` when it can (:class:`~pyro_vae.infer.compiled.CompiledLoss`),
    else eagerly (:func:`gradient_step`). Returns the loss summed over ``x`` (detached)."""
    shard = distributed.shard(x)
    computed = compiled(shard, x.shape[0], kl_weight, params) if compiled is not None else None
    if computed is None:
        loss = objective(vae.model, vae.guide, shard, kl_weight)
        return gradient_step(loss, x.shape[0], params, optimizers, clip_norm)
    return apply_gradients(computed[0], params, optimizers, clip_norm, norm=computed[1])


#: How often the progress bar reads the running loss back from the device (seconds).
PROGRESS_SECONDS = 0.5


def epoch_loop(
    step: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
    description: str = "",
    status: Callable[[], dict] | None = None,
) -> float:
    """Call ``step`` on each shuffled minibatch of ``x``; returns the summed losses it returned
    divided by N, the mean loss per data point. The tqdm bar shows the running mean (and
    ``status()``), read from the device at most every ``PROGRESS_SECONDS`` (at the first step,
    then as time passes, whatever the number of steps).

    Under torch.distributed every rank runs this loop on the same ``x`` and ``generator``, so
    all see the same minibatches; a last one with fewer data points than ranks is skipped (a
    rank's shard must not be empty).

    Pyro's validation (argument, support and shape checks of every distribution and site) is
    left as the caller set it for the first minibatch, which catches a model that does not fit
    its guide or its data, and is switched off for the others, where it would check the same
    shapes again at about a tenth of a step's time (docs/benchmarks.md); a non-finite loss is still
    caught by :func:`gradient_step`."""
    validate = pyro.infer.is_validation_enabled()
    total, seen, shown = torch.zeros((), device=x.device), 0, -math.inf
    batches = tqdm(
        minibatches(x, batch_size, generator),
        total=-(-x.shape[0] // batch_size),
        desc=description,
        disable=not progress,
        leave=False,
        unit="batch",
    )
    for i, xb in enumerate(batches):
        if xb.shape[0] < distributed.world_size():
            continue
        with pyro.validation_enabled(validate and i == 0):
            total += step(xb)
        seen += xb.shape[0]
        if progress and time.monotonic() - shown >= PROGRESS_SECONDS:
            shown = time.monotonic()
            batches.set_postfix(loss=f"{total.item() / seen:.2f}", **(status() if status else {}))
    return total.item() / seen


class SVITrainer:
    """Trains a model (:class:`~pyro_vae.models.base.LatentModel`) by SVI on a Pyro objective.

    Args:
        vae: the model and guide.
        objective: ``loss(model, guide, x, kl_weight)`` from :func:`pyro_vae.make_objective`.
        lr: Adam learning rate for both groups.
        kl_weight: step -> KL weight (see :class:`KLWarmup`).
        clip_norm: if given, the gradient's total norm is clipped to it every step.
        compile: take the steps by a compiled graph of the loss and its gradients
            (:mod:`pyro_vae.infer.compiled`), or eagerly where the model cannot be traced.
        report: where the compiled step's one-line messages go (default: stderr).
    """

    def __init__(
        self,
        vae: LatentModel,
        objective: Objective,
        lr: float = 1e-3,
        kl_weight: Callable[[int], float] | None = None,
        clip_norm: float | None = None,
        compile: bool = False,
        report: Callable[[str], None] | None = None,
    ) -> None:
        vae.check_algo("svi")
        self.vae = vae
        self.clip_norm = clip_norm
        self.objective = objective
        self.kl_weight = kl_weight or KLWarmup()
        self.optimizer = adam(parameter_groups(vae), lr)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.compiled = CompiledLoss(vae, objective, report) if compile else None
        self.step_count = 0

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One gradient step on a minibatch; returns the loss summed over it (detached).

        Under torch.distributed, ``x`` is the global minibatch and this rank computes the loss
        of its shard."""
        kl_weight = self.kl_weight(self.step_count)
        total = minibatch_step(
            self.vae,
            self.objective,
            x,
            kl_weight,
            self.params,
            [self.optimizer],
            self.clip_norm,
            self.compiled,
        )
        self.vae.after_update(model_updated=True)
        self.step_count += 1
        return total

    def train_epoch(
        self,
        x: torch.Tensor,
        batch_size: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
        description: str = "",
        check: bool = True,
    ) -> float:
        """One pass over ``x`` in shuffled minibatches; returns the mean loss per data point."""
        if check:  # fit checks its data once up front and passes check=False
            self.vae.check_data(x)
        self.vae.train()
        return epoch_loop(self.step, x, batch_size, generator, progress, description)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers a learning-rate schedule scales."""
        return [self.optimizer]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = state["step_count"]
