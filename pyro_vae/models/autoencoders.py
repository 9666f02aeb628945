"""The autoencoder family as Pyro programs: the VAE's limit of a point-mass guide.

Generative model (theta):  z ~ flat improper prior on R^d (log p(z) = 0),
                           x | z ~ p_theta(x | z) = likelihood(decoder(z))   (the VAE's likelihoods)
Guide (phi):               z = f_phi(x), a point mass Delta(f_phi(x))

Pyro's ELBO of this pair is E_q[log p(x|z) + log p(z) - log q(z|x)] = log p(x | z = f(x)) + 0 - 0:
the reconstruction loss of the likelihood's type (binary cross-entropy for Bernoulli, squared
error over 2 sigma^2 plus a constant for a Gaussian), so the same SVI and EM trainers fit it.
Nothing organises the code space: no prior mass to cover and no noise in q(z|x) to smooth the
decoder, so codes away from those of the data decode to nothing meaningful (docs/autoencoders.md).
There is no log-likelihood, KL or mutual information to report (:attr:`Autoencoder.not_applicable`).

Variants (``--model ae`` plus flags):

- sparse (``--sparsity RHO --sparsity-weight BETA``): sigmoid codes in (0, 1), and the model adds
  ``pyro.factor("sparsity", -BETA * sum_j KL(RHO || rho_hat_j))`` with rho_hat_j the mean of
  unit j over the minibatch (the sparsity penalty of the UFLDL notes, Ng 2011). The penalty is a
  statistic of the minibatch, not of one data point: the factor gives each data point an equal
  share, so the loss per data point is the mean reconstruction loss plus BETA * KL, as in the
  notes. Under torchrun, rho_hat is taken over each process's shard.
- denoising (``--corrupt gaussian:S | salt-pepper:P | mask:P``): in training mode the guide
  encodes a corrupted copy of x, the likelihood scores the clean x (Vincent et al. 2008;
  :mod:`pyro_vae.models.corruption`).

The encoder follows the VAE's interface, x -> (loc, scale), and the code is ``loc`` (the scale
head is unused and keeps its initial values), so every ``--arch`` and every encoder written for
the VAE serves the autoencoder too. With no hidden layers, a Gaussian likelihood of fixed scale
and no sparsity, the autoencoder is linear and learns the principal subspace of the data
(Baldi and Hornik 1989; tested against PCA).
"""

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from pyro_vae.errors import UserError
from pyro_vae.models.base import LATENT_FIGURES, LatentModel, refuse_flags
from pyro_vae.models.corruption import Corruption
from pyro_vae.models.likelihoods import make_likelihood
from pyro_vae.models.networks import build_networks, check_networks

__all__ = ["Autoencoder", "FlatPrior", "sparsity_kl", "NOT_APPLICABLE", "SPARSITY_WEIGHT"]

#: The default BETA, chosen by measurement on MNIST (docs/autoencoders.md): with the 784-400-50
#: MLPs and a Bernoulli likelihood (a reconstruction loss of 70-100 nats an image, against a
#: penalty of a few nats at BETA = 1), BETA = 1 leaves the units at mean activations 0.10-0.26
#: for RHO = 0.05 after 5 epochs; BETA = 30 brings every unit within 0.02 of RHO (0.046-0.065).
SPARSITY_WEIGHT = 30.0

#: Why the VAE's probabilistic metrics are left out for the autoencoder (written to eval.json).
NOT_APPLICABLE = {
    "elbo": "the autoencoder's prior is flat and improper and its guide a point mass: the "
    "'ELBO' is log p(x | f(x)), reported as recon; there is no KL term and no bound on log p(x)",
    "log_likelihood": "log p(x) is undefined under an improper prior (and importance sampling "
    "from a point mass has no density to weigh by)",
    "mutual_info": "I_q(x; z) needs a density q(z|x); a point-mass guide has none",
}


def sparsity_kl(codes: torch.Tensor, target: float, eps: float = 1e-6) -> torch.Tensor:
    """sum_j KL(target || rho_hat_j) between Bernoulli means, with rho_hat_j the mean of unit j of
    ``codes`` (..., batch, units) over the batch; shape (...)."""
    rho_hat = codes.mean(-2).clamp(eps, 1 - eps)
    kl = target * (target / rho_hat).log() + (1 - target) * ((1 - target) / (1 - rho_hat)).log()
    return kl.sum(-1)


class FlatPrior(dist.ImproperUniform):
    """Pyro's ``ImproperUniform`` (log-density 0), with its zeros on the value's device: Pyro's
    own are a CPU tensor, which per-data-point sums of a model on the GPU cannot add."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(value).to(value.device)


class Autoencoder(LatentModel):
    """An autoencoder written as a model/guide pair (see the module docstring).

    Args:
        encoder: x (batch, D) -> (loc, scale), each (batch, z_dim); the code is loc.
        decoder: z (..., z_dim) -> likelihood parameters (..., P * D).
        likelihood: p(x | z) as for the VAE (:mod:`pyro_vae.models.likelihoods`).
        z_dim: the code's size.
        data_dim: D; when given, the networks are checked once on a dummy batch.
        sparsity: target mean activation RHO in (0, 1) of each code unit; makes the codes
            sigmoid units and adds the sparsity penalty. None: linear codes, no penalty.
        sparsity_weight: BETA, the penalty's weight (default :data:`SPARSITY_WEIGHT`, measured).
        corruption: what the encoder sees in training mode (the denoising autoencoder).
    """

    own_fields = ("sparsity", "sparsity_weight")

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        z_dim: int,
        data_dim: int | None = None,
        sparsity: float | None = None,
        sparsity_weight: float = SPARSITY_WEIGHT,
        corruption: Corruption | None = None,
    ) -> None:
        super().__init__()
        if sparsity is not None and not 0 < sparsity < 1:
            raise UserError(f"--sparsity must lie in (0, 1), got {sparsity}")
        if not sparsity_weight > 0:
            raise UserError(f"--sparsity-weight must be positive, got {sparsity_weight}")
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.z_dim = z_dim
        self.data_dim = data_dim
        self.sparsity = sparsity
        self.sparsity_weight = sparsity_weight
        self.corruption = corruption
        sparse = ("sparsity",) if sparsity is not None else ()
        denoising = ("denoising",) if corruption is not None else ()
        self.figures = tuple(f for f in LATENT_FIGURES if f != "samples") + sparse + denoising
        self.metrics = ("reconstruction", "active_units") + sparse + denoising
        self.not_applicable = dict(NOT_APPLICABLE)
        if data_dim is not None:
            out_dim = getattr(likelihood, "params_per_dim", 1) * data_dim
            check_networks(encoder, decoder, data_dim, z_dim, out_dim)

    # --- the run system ------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Flags that only mean something for a VAE (or for MCMC) are refused."""
        refusals = [
            (config.prior != "normal", f"--prior {config.prior}", "its prior is flat"),
            (config.beta != 1.0, "--beta", "it has no KL term to weigh"),
            (config.kl_warmup != 0.0, "--kl-warmup", "it has no KL term to weigh"),
            (
                config.elbo != "trace" or config.num_particles != 1,
                f"--elbo {config.elbo} --num-particles {config.num_particles}",
                "with a point-mass guide every bound equals log p(x | f(x)); use --elbo trace",
            ),
            (config.algo == "mcem", "--algo mcem", "an improper flat prior has no posterior"),
            (
                config.algo == "em" and config.e_rule == "aggressive",
                "--e-rule aggressive",
                "it watches the mutual information, which a point-mass guide does not have",
            ),
        ]
        refuse_flags("ae", refusals)

    @classmethod
    def from_config(
        cls, config, data_dim: int, image_shape: tuple[int, int], prior: nn.Module | None = None
    ) -> "Autoencoder":
        """The autoencoder of ``--model ae`` and its variant flags."""
        if prior is not None:
            raise UserError("--model ae has a flat prior; a prior module applies to the VAE")
        lik = make_likelihood(config.likelihood, data_dim, config.gaussian_scale)
        encoder, decoder = build_networks(
            config.arch,
            data_dim,
            config.z_dim,
            config.hidden_dims,
            lik,
            image_shape,
            config.encoder,
            config.decoder,
            config.activation,
        )
        return cls(
            encoder,
            decoder,
            lik,
            config.z_dim,
            data_dim=data_dim,
            sparsity=config.sparsity,
            sparsity_weight=config.sparsity_weight,
            corruption=Corruption(config.corrupt) if config.corrupt else None,
        )

    # --- the two Pyro programs -------------------------------------------------------------
    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """Flat p(z), p_theta(x | z), and the sparsity factor; ``kl_weight`` is unused (no KL)."""
        self.register_modules("decoder", "likelihood")
        flat = FlatPrior(constraints.real, (), (self.z_dim,))
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", flat)
            if self.sparsity is not None:
                penalty = self.sparsity_weight * sparsity_kl(z, self.sparsity)
                pyro.factor("sparsity", -penalty.unsqueeze(-1).expand(z.shape[:-1]))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """The point mass at the code f_phi(x) (of a corrupted x in training, if denoising)."""
        pyro.module("encoder", self.encoder)
        if self.corruption is not None and self.training:
            x = self.corruption(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Delta(self._code(x), event_dim=1))

    def _code(self, x: torch.Tensor) -> torch.Tensor:
        loc = self.encoder(x)[0]
        return torch.sigmoid(loc) if self.sparsity is not None else loc

    # --- parameter groups ------------------------------------------------------------------
    def guide_parameters(self) -> Iterator[nn.Parameter]:
        """phi: the encoder."""
        return self.encoder.parameters()

    def model_parameters(self) -> Iterator[nn.Parameter]:
        """theta: the decoder and the likelihood."""
        yield from self.decoder.parameters()
        yield from self.likelihood.parameters()

    # --- pictures ----------------------------------------------------------------------------
    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), shape (N, z_dim)."""
        return self._code(x)
