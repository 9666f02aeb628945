"""The VAE as a pair of Pyro programs.

Generative model (theta):   z ~ p(z),   x | z ~ p_theta(x | z) = likelihood(decoder(z))
Guide, amortized (phi):     z | x ~ q_phi(z | x) = N(mu_phi(x), diag sigma_phi(x)^2)

With a corruption (``--corrupt``, the denoising VAE of Im et al. 2017) the guide encodes a
corrupted copy of x in training mode, while the likelihood scores the clean x.

Both programs name the latent site ``"z"`` inside ``pyro.plate("data")``, so any of Pyro's ELBOs
pairs them. ``kl_weight`` (beta, or the KL warm-up schedule) scales the latent site in both
programs with ``poutine.scale``: Trace_ELBO then weighs log p(z) - log q(z|x) by beta, and
TraceMeanField_ELBO weighs its analytic KL by the guide site's scale, so
loss = -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)) for every objective.
"""

import warnings
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.models.base import LATENT_FIGURES, STANDARD_METRICS, LatentModel
from pyro_vae.models.corruption import Corruption
from pyro_vae.models.likelihoods import make_likelihood
from pyro_vae.models.networks import build_networks, check_networks
from pyro_vae.models.priors import has_closed_form_kl, make_prior

__all__ = ["VAE", "build_vae"]


class VAE(LatentModel):
    """A variational autoencoder built from four parts (and optionally a corruption).

    Args:
        encoder: x (batch, D) -> (loc, scale) of q(z|x), each (batch, z_dim).
        decoder: z (..., z_dim) -> likelihood parameters (..., P * D), P the likelihood's
            ``params_per_dim`` (default 1).
        prior: module whose ``forward()`` returns p(z), event dim 1 (see
            :mod:`pyro_vae.models.priors`).
        likelihood: module mapping decoder output to p(x|z), event dim 1
            (see :mod:`pyro_vae.models.likelihoods`).
        data_dim: D; when given, the networks are run once on a dummy batch and wrong output
            shapes raise a :class:`~pyro_vae.errors.UserError` naming the expected shapes.
        corruption: a :class:`~pyro_vae.models.corruption.Corruption`: in training mode the
            guide encodes a corrupted copy of x while the likelihood scores x (the denoising VAE
            of Im et al. 2017).

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
        corruption: Corruption | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.data_dim = data_dim
        self.corruption = corruption
        self.figures = LATENT_FIGURES + (("denoising",) if corruption is not None else ())
        self.metrics = STANDARD_METRICS + (("denoising",) if corruption is not None else ())
        self.not_applicable = {}
        if data_dim is not None:
            self.check_shapes(data_dim)

    @classmethod
    def check_config(cls, config) -> None:
        """A corruption acts on the guide, which Monte Carlo EM does not train."""
        if config.corrupt is not None and config.algo == "mcem":
            raise UserError("--corrupt corrupts what the guide sees; --algo mcem trains no guide")

    @classmethod
    def from_config(
        cls, config, data_dim: int, image_shape: tuple[int, int], prior: nn.Module | None = None
    ) -> "VAE":
        """:func:`build_vae` from a run's settings (``prior``: a module of the user's own);
        warns when ``--elbo meanfield`` has no closed-form KL to use with the prior."""
        vae = build_vae(
            data_dim,
            config.z_dim,
            config.hidden_dims,
            config.likelihood,
            prior=config.prior if prior is None else prior,
            arch=config.arch,
            gaussian_scale=config.gaussian_scale,
            image_shape=image_shape,
            corrupt=config.corrupt,
            encoder=config.encoder,
            decoder=config.decoder,
            activation=config.activation,
            vae_class=cls,
        )
        if config.elbo == "meanfield" and not has_closed_form_kl(vae.prior, config.z_dim):
            warnings.warn(
                f"--elbo meanfield: prior {config.prior!r} has no closed-form KL to the guide; "
                "Pyro uses the Monte Carlo estimate (as --elbo trace does)",
                stacklevel=3,
            )
        return vae

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

    # --- the two Pyro programs -------------------------------------------------------------
    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """p(z) p_theta(x|z) for a minibatch x of shape (batch, D)."""
        self.register_modules("decoder", "prior", "likelihood")
        with pyro.plate("data", x.shape[0], dim=-1):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """q_phi(z|x): the encoder's diagonal Gaussian, reparameterized (z = mu + sigma * eps);
        of a corrupted copy of x in training mode when the VAE has a corruption."""
        pyro.module("encoder", self.encoder)
        if self.corruption is not None and self.training:
            x = self.corruption(x)
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
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior means E_q[z|x], shape (N, z_dim)."""
        return self.encoder(x)[0]

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
    corrupt: str | None = None,
    encoder: str | None = None,
    decoder: str | None = None,
    vae_class: type[VAE] = VAE,
    activation: str = "relu",
) -> VAE:
    """A VAE from command-line names: by default MLP encoder and decoder, N(0, I) prior.

    ``prior`` is a ``--prior`` spec (``normal``, ``mog:K``, ``vamp:K``, ``flow:L``) or a prior
    module of the user's own; ``arch`` is ``mlp`` (mirrored ``hidden_dims``) or ``conv``
    (``image_shape`` images; ``hidden_dims`` unused); ``encoder`` / ``decoder`` specs of
    networks of your own (:func:`~pyro_vae.models.networks.build_networks`); ``corrupt`` a
    ``--corrupt`` spec for the denoising VAE; ``vae_class`` the class to build (a subclass of
    :class:`VAE`, as ``--model my_models:MyVAE`` names); ``activation`` the MLPs' nonlinearity.
    """
    lik = make_likelihood(likelihood, data_dim, gaussian_scale)
    encoder_net, decoder_net = build_networks(
        arch, data_dim, z_dim, hidden_dims, lik, image_shape, encoder, decoder, activation
    )
    if isinstance(prior, str):
        prior = make_prior(prior, z_dim, encoder_net, data_dim)
    elif tuple(prior().event_shape) != (z_dim,):
        shape = tuple(prior().event_shape)
        raise UserError(f"the prior's event shape is {shape} but --z-dim is {z_dim}")
    corruption = Corruption(corrupt) if corrupt else None
    return vae_class(encoder_net, decoder_net, prior, lik, data_dim=data_dim, corruption=corruption)
