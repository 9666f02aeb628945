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

from pyro_vae.errors import UserError
from pyro_vae.likelihoods import check_data, make_likelihood
from pyro_vae.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, check_networks
from pyro_vae.priors import make_prior

__all__ = ["VAE", "build_vae"]


class VAE(nn.Module):
    """A variational autoencoder built from four parts.

    Args:
        encoder: x (batch, D) -> (loc, scale) of q(z|x), each (batch, z_dim).
        decoder: z (..., z_dim) -> likelihood parameters (..., P * D), P the likelihood's
            ``params_per_dim`` (default 1).
        prior: module whose ``forward()`` returns p(z), event dim 1 (see :mod:`pyro_vae.priors`).
        likelihood: module mapping decoder output to p(x|z), event dim 1
            (see :mod:`pyro_vae.likelihoods`).
        data_dim: D; when given, the networks are run once on a dummy batch and wrong output
            shapes raise a :class:`~pyro_vae.errors.UserError` naming the expected shapes.

    The parameters split into the guide side (phi: the encoder) and the model side (theta:
    decoder, prior, likelihood); trainers optimise them as separate parameter groups. A prior
    that reuses the encoder (VampPrior) holds it by reference, so phi and theta stay disjoint.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        likelihood: nn.Module,
        data_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.data_dim = data_dim
        if data_dim is not None:
            self.check_shapes(data_dim)

    def check_shapes(self, data_dim: int) -> None:
        """Check encoder, prior and decoder against each other on a dummy batch (once)."""
        event_shape = tuple(self.prior().event_shape)
        if len(event_shape) != 1:
            raise UserError(f"the prior must have event shape (z_dim,); got {event_shape}")
        out_dim = getattr(self.likelihood, "params_per_dim", 1) * data_dim
        check_networks(self.encoder, self.decoder, data_dim, event_shape[0], out_dim)
        guide_ids = {id(p) for p in self.guide_parameters()}
        if any(id(p) in guide_ids for p in self.model_parameters()):
            raise UserError(
                "a parameter is on both the guide and the model side: a prior that reuses the "
                "encoder must hold it by reference, not as a submodule (see VampPrior)"
            )

    def check_data(self, x: torch.Tensor) -> None:
        """Reject a data tensor this VAE cannot model with a one-line :class:`UserError`.

        Checks type, dtype, shape (N, D), finiteness and the likelihood's support. Trainers and
        evaluation call it once per pass over a tensor, never per minibatch step.
        """
        if not isinstance(x, torch.Tensor):
            raise UserError(f"data must be a torch.Tensor, not {type(x).__name__}")
        if not x.is_floating_point():
            raise UserError(
                f"data must be floating point, got {x.dtype}: "
                "use x.float() with images scaled to [0, 1]"
            )
        expected = f"(N, {self.data_dim})" if self.data_dim else "(N, D)"
        wrong_width = self.data_dim is not None and x.dim() == 2 and x.shape[1] != self.data_dim
        if x.dim() != 2 or x.shape[0] == 0 or wrong_width:
            raise UserError(
                f"data must have shape {expected} with N > 0, got {tuple(x.shape)}: "
                "flatten images with x.reshape(len(x), -1)"
            )
        if not torch.isfinite(x).all():
            raise UserError("data contains NaN or infinite values")
        check_data(self.likelihood, x)

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
        loc, scale = self.encoder(x)
        with pyro.plate("data", x.shape[0], dim=-1):
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
    prior: str | nn.Module = "normal",
    arch: str = "mlp",
    gaussian_scale: str = "pixel",
    image_shape: tuple[int, int] = (28, 28),
) -> VAE:
    """A VAE from command-line names: by default MLP encoder and decoder, N(0, I) prior.

    ``prior`` is a ``--prior`` spec (``normal``, ``mog:K``, ``vamp:K``, ``flow:L``) or a prior
    module of the user's own; ``arch`` is ``mlp`` (mirrored ``hidden_dims``) or ``conv``
    (``image_shape`` images; ``hidden_dims`` unused).
    """
    lik = make_likelihood(likelihood, data_dim, gaussian_scale)
    out_dim = lik.params_per_dim * data_dim
    if arch == "mlp":
        encoder = MLPEncoder(data_dim, hidden_dims, z_dim)
        decoder = MLPDecoder(z_dim, tuple(reversed(hidden_dims)), out_dim)
    elif arch == "conv":
        if image_shape[0] * image_shape[1] != data_dim or min(image_shape) % 4:
            raise UserError("--arch conv needs h x w images with h, w divisible by 4, D = h * w")
        encoder = ConvEncoder(image_shape, z_dim)
        decoder = ConvDecoder(z_dim, image_shape, out_channels=lik.params_per_dim)
    else:
        raise UserError(f"unknown arch {arch!r}; choose from mlp, conv")
    if isinstance(prior, str):
        prior = make_prior(prior, z_dim, encoder, data_dim)
    elif tuple(prior().event_shape) != (z_dim,):
        shape = tuple(prior().event_shape)
        raise UserError(f"the prior's event shape is {shape} but --z-dim is {z_dim}")
    return VAE(encoder, decoder, prior, lik, data_dim=data_dim)
