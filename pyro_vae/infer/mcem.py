"""Monte Carlo EM: the classical way to fit p_theta(x | z), with MCMC in place of an encoder.

For each minibatch x (indices n of the training set):

    E-step:  z_s ~ p_theta(z | x_n), s = 1..S     HMC or NUTS on the model program, theta fixed,
                                                  each chain warm-started at z_n's last sample
    M-step:  theta <- Adam step along  grad_theta (1/S) sum_s log p_theta(x_n, z_s)

The M-step objective is the Monte Carlo estimate of Q(theta) = E_p(z|x, theta_old)[log p_theta(x,
z)], the expected complete-data log-likelihood of classical EM (Wei and Tanner 1990); no guide is
trained. Kingma and Welling (2014, Section 5 and Fig. 3) compared it with AEVB (our SVI): per
data point it is accurate, but the MCMC E-step is too slow for large data sets.

The encoder the VAE holds is unused; for evaluation, :class:`~pyro_vae.infer.posterior_sampling
.PosteriorEncoder` replaces it (see :func:`pyro_vae.runs.fit.load_vae`).
"""

from collections.abc import Callable

import pyro
import torch
from pyro import poutine

from pyro_vae.errors import UserError
from pyro_vae.infer.posterior_sampling import ChainSettings, sample_posterior
from pyro_vae.infer.svi import KLWarmup, adam, epoch_loop, gradient_step
from pyro_vae.models.vae import VAE

__all__ = ["MCEMTrainer", "complete_data_log_likelihood"]


def complete_data_log_likelihood(vae: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """sum_n (1/S) sum_s log p_theta(x_n, z_sn) for samples ``z`` of shape (S, B, z_dim).

    The model program is run with its latent site conditioned on the samples, vectorized over
    them with a particle plate (Pyro then scores ``z`` as observed: log p(z) + log p(x|z)).
    """
    conditioned = poutine.condition(vae.model, data={"z": z})
    with pyro.plate("particles", z.shape[0], dim=-2):
        trace = poutine.trace(conditioned).get_trace(x)
    return trace.log_prob_sum() / z.shape[0]


class MCEMTrainer:
    """Trains the model side (decoder, prior, likelihood) of a VAE by Monte Carlo EM.

    Args:
        vae: the model; its encoder is neither used nor changed.
        num_data: N, the size of the training set whose points the chains are kept for.
        chain: E-step settings (kernel, warm-up, samples, leapfrog steps).
        lr: Adam learning rate of the M-step.
        clip_norm: if given, the M-step gradient's total norm is clipped to it.

    The interface is that of :class:`~pyro_vae.infer.svi.SVITrainer` (``train_epoch``,
    ``state_dict``, ``step_count``), plus the chains' last states in the checkpoint so a resumed
    run continues them.
    """

    def __init__(
        self,
        vae: VAE,
        num_data: int,
        chain: ChainSettings | None = None,
        lr: float = 1e-3,
        clip_norm: float | None = None,
    ) -> None:
        vae.check_algo("mcem")
        if not isinstance(vae, VAE):
            raise UserError(
                f"Monte Carlo EM trains a VAE (HMC on its latent 'z'), not a {type(vae).__name__}"
            )
        self.vae = vae
        self.chain = chain or ChainSettings()
        self.clip_norm = clip_norm
        self.model_params = list(vae.model_parameters())
        self.optimizer = adam(self.model_params, lr)
        self.kl_weight: Callable[[int], float] = KLWarmup()  # MCEM targets the true posterior
        z_dim = vae.prior().event_shape[0]
        device = self.model_params[0].device if self.model_params else None
        self.chain_state = torch.zeros(num_data, z_dim, device=device)  # last sample per point
        self.started = torch.zeros(num_data, dtype=torch.bool, device=device)
        self.step_size = 0.1  # carried from one E-step's adaptation to the next
        self.step_count = 0

    def e_step(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Posterior samples (S, B, z_dim) for the data points ``index`` (their values ``x``);
        chains never run before start from a prior draw."""
        fresh = ~self.started[index]
        z0 = self.chain_state[index]
        if fresh.any():
            z0[fresh] = self.vae.prior().sample((int(fresh.sum()),)).to(z0)
        samples, self.step_size = sample_posterior(
            self.vae.model, x, z0, self.chain, self.step_size
        )
        self.chain_state[index] = samples[-1]
        self.started[index] = True
        return samples

    def m_step(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One Adam step on theta along the gradient of the samples' mean log p(x, z); returns
        the negated objective summed over the minibatch (detached), the loss it minimises."""
        loss = -complete_data_log_likelihood(self.vae, x, z)
        gradient_step(loss, x.shape[0], self.model_params, [self.optimizer], self.clip_norm)
        self.vae.after_update(model_updated=True)
        return loss.detach()

    def step(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """An E-step then an M-step on the minibatch ``x = data[index]``."""
        loss = self.m_step(x, self.e_step(x, index))
        self.step_count += 1
        return loss

    def train_epoch(
        self,
        x: torch.Tensor,
        batch_size: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
        description: str = "",
        check: bool = True,
    ) -> float:
        """One pass over ``x`` in shuffled minibatches; returns the M-steps' mean
        -(1/S) sum_s log p(x, z_s) per data point (the loss minimised, not a bound on log p(x))."""
        if check:
            self.vae.check_data(x)
        if x.shape[0] != self.chain_state.shape[0]:
            raise ValueError(f"MCEMTrainer keeps {self.chain_state.shape[0]} chains, got {len(x)}")
        self.vae.train()
        # Shuffle indices rather than rows, so each step knows whose chains to continue.
        index = torch.arange(x.shape[0], device=x.device)
        return epoch_loop(
            lambda idx: self.step(x[idx], idx),
            index,
            batch_size,
            generator,
            progress,
            description,
            status=lambda: {"step": f"{self.step_size:.3g}"},
        )

    def epoch_record(self) -> dict[str, float | int | None]:
        """Columns for ``metrics.csv``: no encoder updates; one decoder update per minibatch."""
        return {
            "encoder_updates": 0,
            "decoder_updates": self.step_count,
            "inner_steps": 0,
            "val_mi": None,
        }

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers a learning-rate schedule scales."""
        return [self.optimizer]

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "chain_state": self.chain_state.clone(),
            "started": self.started.clone(),
            "step_size": self.step_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = state["step_count"]
        self.chain_state.copy_(state["chain_state"])
        self.started.copy_(state["started"])
        self.step_size = state["step_size"]
