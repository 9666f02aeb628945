"""The VAE as a pair of Pyro programs.

Generative model (theta):   z ~ p(z),   x | z ~ p_theta(x | z) = likelihood(decoder(z))
Guide, amortized (phi):     z | x ~ q_phi(z | x) = N(mu_phi(x), diag sigma_phi(x)^2)

Both programs name the latent site ``"z"`` inside ``pyro.plate("data")``, so any of Pyro's ELBOs
pairs them. ``kl_weight`` (beta, or the KL warm-up schedule) scales the latent site in both
programs with ``poutine.scale``: Trace_ELBO then weighs log p(z) - log q(z|x) by beta, and
TraceMeanField_ELBO weighs its analytic KL by the guide site's scale, so
loss = -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)) for every objective.
"""

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_vae.likelihoods import make_likelihood
from pyro_vae.networks import MLPDecoder, MLPEncoder
from pyro_vae.priors import StandardNormalPrior

__all__ = ["VAE", "build_vae"]


class VAE(nn.Module):
    """A variational autoencoder built from four parts.

    Args:
        encoder: x (batch, D) -> (loc, scale) of q(z|x), each (batch, z_dim).
        decoder: z (..., z_dim) -> likelihood parameters (..., D).
        prior: module whose ``forward()`` returns p(z), event dim 1.
        likelihood: module mapping decoder output to p(x|z), event dim 1.

    The parameters split into the guide side (phi: the encoder) and the model side (theta:
    decoder, prior, likelihood); trainers optimise them as separate parameter groups.
    """

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module, likelihood: nn.Module
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood

    # --- the two Pyro programs -------------------------------------------------------------
    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """p(z) p_theta(x|z) for a minibatch x of shape (batch, D)."""
        for name in ("decoder", "prior", "likelihood"):
            module = getattr(self, name)
            if any(True for _ in module.parameters()):
                pyro.module(name, module)
        with pyro.plate("data", x.shape[0], dim=-1):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """q_phi(z|x): the encoder's diagonal Gaussian, reparameterized (z = mu + sigma * eps)."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], dim=-1):
            loc, scale = self.encoder(x)
            with poutine.scale(scale=kl_weight):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # --- parameter groups ------------------------------------------------------------------
    def guide_parameters(self) -> Iterator[nn.Parameter]:
        """phi: the parameters of q(z|x)."""
        return self.encoder.parameters()

    def model_parameters(self) -> Iterator[nn.Parameter]:
        """theta: the parameters of p(z) p(x|z)."""
        for module in (self.decoder, self.prior, self.likelihood):
            yield from module.parameters()

    # --- conveniences for users and figures --------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (loc, scale) of q(z|x)."""
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """The distribution p(x|z)."""
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = E_q[z|x]): what the autoencoder makes of x."""
        loc, _ = self.encoder(x)
        return self.likelihood.mean(self.decoder(loc))

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means of p(x|z) for z drawn from the prior, shape (num_samples, D)."""
        z = self.prior().sample((num_samples,))
        return self.likelihood.mean(self.decoder(z))


def build_vae(
    data_dim: int,
    z_dim: int = 50,
    hidden_dims: tuple[int, ...] = (400,),
    likelihood: str = "bernoulli",
) -> VAE:
    """The default VAE: MLP encoder and decoder (mirrored hidden sizes), N(0, I) prior."""
    return VAE(
        encoder=MLPEncoder(data_dim, hidden_dims, z_dim),
        decoder=MLPDecoder(z_dim, tuple(reversed(hidden_dims)), data_dim),
        prior=StandardNormalPrior(z_dim),
        likelihood=make_likelihood(likelihood, data_dim),
    )
