"""The VQ-VAE (van den Oord et al. 2017) as a pair of Pyro programs.

Generative model (theta):  k ~ p(k), a grid of G code indices in {0..K-1}  (uniform in stage 1)
                           z_q = (e_k1, ..., e_kG)
                           x | k ~ p_theta(x | z_q) = likelihood(decoder(z_q))
Guide (phi):               k(x) = argmin_j ||z_e(x)_i - e_j||  per position i: a point mass

The latent site ``"z"`` holds the code vectors z_q rather than the indices k: they are the same
discrete variable (each vector is a code), but a vector can carry the straight-through gradient.
The guide's value is ``sg[e_k] + z_e - sg[z_e]``, equal to e_k bit for bit, whose gradient with
respect to z_e is the identity: the decoder's gradient reaches the encoder unchanged
(Bengio et al. 2013's straight-through estimator, the paper's eq. 3). The model scores the value
with :class:`~pyro_vae.models.code_priors.CodeVectors`, the prior's probability of its indices.

What Pyro's Trace_ELBO computes on this pair, per data point:

    ELBO = log p(x | z_q(x)) + log p(k(x)) - log q(k(x) | x)  =  log p(x | z_q(x)) + log p(k(x))

since q is a point mass (log q = 0). That is the paper's bound on log p(x) (Section 3.2), and
with the uniform prior log p(k) = -G log K is a constant. The two other terms of the VQ-VAE loss
are not ELBO terms; the guide adds them as ``pyro.factor`` sites (Pyro subtracts a guide factor
from the ELBO, so the loss grows by it), and held-out evaluation, which scores latent and
observed sites only (:mod:`pyro_vae.infer.traces`), leaves them out:

- commitment loss beta ||z_e - sg[e_k]||^2 (``--commitment``): trains the encoder (phi);
- codebook loss ||sg[z_e] - e_k||^2 (``--codebook-update loss``): trains the codes (theta).
  With ``--codebook-update ema`` the codes follow moving averages instead
  (:mod:`pyro_vae.models.codebook`), applied by :meth:`VQVAE.after_update` after each update of
  the model side; dead codes are restarted there too.

So under variational EM the E-step trains the encoder on reconstruction (straight through) and
commitment, and the M-step the decoder on reconstruction and the codes on the codebook loss (or
by EMA): the assignment-then-average of k-means, with a decoder.
"""

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.models.base import LatentModel, refuse_flags
from pyro_vae.models.code_priors import CodeVectors, UniformCodePrior, tempered
from pyro_vae.models.codebook import Codebook
from pyro_vae.models.corruption import Corruption
from pyro_vae.models.likelihoods import make_likelihood
from pyro_vae.models.networks import build_grid_networks

__all__ = ["VQVAE", "NOT_APPLICABLE", "LOW_CODE_USAGE"]

#: The fraction of the codebook below which a finished run prints a hint (1 epoch of the
#: defaults on MNIST: 2 of 512 codes; 15 epochs: 511 of 512).
LOW_CODE_USAGE = 0.25

#: Why some standard metrics are left out for the VQ-VAE (written to eval.json).
NOT_APPLICABLE = {
    "log_likelihood": "the guide is a point mass, so the importance-weighted bound L_K equals "
    "the ELBO (reported as elbo) for every K",
    "active_units": "the codes are discrete; codebook usage (codes_used, perplexity) plays "
    "that role",
    "mutual_info": "I_q(x; k) of a deterministic guide is the entropy of the code grids, "
    "which a learned prior bounds; see the fitted priors' code NLL (pyro-vae fit-prior)",
}


class VQVAE(LatentModel):
    """A VQ-VAE written as a model/guide pair (see the module docstring).

    Args:
        encoder: x (batch, D_x) -> z_e (batch, G, D).
        decoder: z_q (..., G, D) -> likelihood parameters (..., P * D_x).
        likelihood: p(x | z_q) (:mod:`pyro_vae.models.likelihoods`).
        codebook: the K code vectors (:class:`~pyro_vae.models.codebook.Codebook`).
        num_positions: G.
        prior: a code prior (:mod:`pyro_vae.models.code_priors`); default uniform.
        commitment: beta, the weight of the commitment loss.
        data_dim: D_x, for the default data check.
        corruption: what the encoder sees in training mode (a denoising VQ-VAE).
    """

    own_fields = (
        "codebook_size",
        "code_dim",
        "commitment",
        "codebook_update",
        "restart_codes",
        "grid_halvings",
    )

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        codebook: Codebook,
        num_positions: int,
        prior: nn.Module | None = None,
        commitment: float = 0.25,
        data_dim: int | None = None,
        corruption: Corruption | None = None,
        restart_codes: bool = True,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.codebook = codebook
        self.num_positions = num_positions
        self.prior = prior if prior is not None else UniformCodePrior(codebook.size, num_positions)
        self.commitment = commitment
        self.data_dim = data_dim
        self.corruption = corruption
        self.restart_codes = restart_codes
        self.restarted = 0  # dead codes restarted so far (not saved: a diagnostic)
        self._last_assignment: tuple[torch.Tensor, torch.Tensor] | None = None
        denoising = ("denoising",) if corruption is not None else ()
        self.figures = ("reconstructions", "samples", "codebook_usage") + denoising
        self.metrics = ("elbo", "reconstruction", "codebook") + denoising
        self.not_applicable = dict(NOT_APPLICABLE)

    # --- the run system ------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Flags of the VAE's Gaussian latent, of MCMC, or of a second stage are refused."""
        if config.codebook_size < 2:
            raise UserError(f"--codebook-size must be at least 2, got {config.codebook_size}")
        if config.code_dim < 1:
            raise UserError(f"--code-dim must be at least 1, got {config.code_dim}")
        if config.commitment < 0:
            raise UserError(f"--commitment must not be negative, got {config.commitment}")
        if config.grid_halvings < 2:
            raise UserError(f"--grid-halvings must be at least 2, got {config.grid_halvings}")
        if config.arch != "conv" and config.grid_halvings != 2:
            raise UserError(
                "--grid-halvings shapes the grid of --arch conv; with --arch mlp, --z-dim sets "
                "the number of grid positions"
            )
        refusals = [
            (
                config.prior != "normal",
                f"--prior {config.prior}",
                "stage 1 trains under the uniform code prior; fit another one afterwards "
                "with: pyro-vae fit-prior RUN --prior categorical|transformer",
            ),
            (
                config.activation != "relu",
                f"--activation {config.activation}",
                "its grid networks have ReLU layers",
            ),
            (
                config.encoder is not None or config.decoder is not None,
                "--encoder / --decoder",
                "its networks map images to grids of code vectors; use --arch mlp|conv",
            ),
            (config.beta != 1.0, "--beta", "it has no KL term to weigh"),
            (config.kl_warmup != 0.0, "--kl-warmup", "it has no KL term to weigh"),
            (
                config.elbo != "trace" or config.num_particles != 1,
                f"--elbo {config.elbo} --num-particles {config.num_particles}",
                "with a point-mass guide every bound is the same; use --elbo trace",
            ),
            (config.algo == "mcem", "--algo mcem", "its codes are fitted by the guide"),
            (
                config.algo == "em" and config.e_rule == "aggressive",
                "--e-rule aggressive",
                "it watches the mutual information, which a point-mass guide does not have",
            ),
        ]
        refuse_flags("vqvae", refusals)

    @classmethod
    def from_config(
        cls, config, data_dim: int, image_shape: tuple[int, int], prior: nn.Module | None = None
    ) -> "VQVAE":
        """The VQ-VAE of ``--model vqvae`` (``prior``: a code prior module, default uniform)."""
        lik = make_likelihood(config.likelihood, data_dim, config.gaussian_scale)
        encoder, decoder, positions = build_grid_networks(
            config.arch,
            data_dim,
            config.code_dim,
            config.z_dim,
            config.hidden_dims,
            lik,
            image_shape,
            config.grid_halvings,
        )
        return cls(
            encoder,
            decoder,
            lik,
            Codebook(config.codebook_size, config.code_dim, config.codebook_update),
            positions,
            prior=prior,
            commitment=config.commitment,
            data_dim=data_dim,
            corruption=Corruption(config.corrupt) if config.corrupt else None,
            restart_codes=config.restart_codes,
        )

    # --- the two Pyro programs -------------------------------------------------------------
    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """p(k) over the grid of codes and p_theta(x | z_q); ``kl_weight`` is unused."""
        self.register_modules("decoder", "prior", "likelihood")
        with pyro.plate("data", x.shape[0], dim=-1):
            z_q = pyro.sample("z", CodeVectors(self.prior(), self.codebook))
            pyro.sample("x", self.likelihood(self.decoder(z_q)), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """The point mass on the nearest codes of z_e(x), with the straight-through value, and
        the commitment (and codebook) losses as guide factors."""
        self.register_modules("encoder", "codebook")  # codebook: under --codebook-update loss
        if self.corruption is not None and self.training:
            x = self.corruption(x)
        z_e = self.encoder(x)
        k = self.codebook.nearest(z_e)
        e_k = self.codebook.lookup(k)
        if self.training:
            self._last_assignment = (z_e.detach(), k)
        with pyro.plate("data", x.shape[0], dim=-1):
            commitment = (z_e - e_k.detach()).pow(2).sum((-2, -1))
            pyro.factor("commitment", self.commitment * commitment, has_rsample=True)
            if self.codebook.update == "loss":
                codebook = (z_e.detach() - e_k).pow(2).sum((-2, -1))
                pyro.factor("codebook", codebook, has_rsample=True)
            straight_through = e_k.detach() + (z_e - z_e.detach())
            self.codebook.remember(straight_through, k)  # the model scores k without a search
            pyro.sample("z", dist.Delta(straight_through, event_dim=2))

    # --- parameter groups and the codebook's other updates ----------------------------------
    def guide_parameters(self) -> Iterator[nn.Parameter]:
        """phi: the encoder."""
        return self.encoder.parameters()

    def model_parameters(self) -> Iterator[nn.Parameter]:
        """theta: decoder, codebook (under ``loss``), prior and likelihood."""
        for module in (self.decoder, self.codebook, self.prior, self.likelihood):
            yield from module.parameters()

    def after_update(self, model_updated: bool) -> None:
        """After a model-side update: the codebook's EMA step and dead-code restarts, from the
        assignments of the minibatch the update was computed on."""
        if model_updated and self._last_assignment is not None:
            z_e, k = self._last_assignment
            if self.codebook.update == "ema" or self.restart_codes:
                restarted = self.codebook.after_model_update(z_e, k, self.restart_codes)
                self.restarted += restarted
        self._last_assignment = None

    @torch.no_grad()
    def end_of_run_hint(self, x: torch.Tensor) -> str | None:
        """When fewer than :data:`LOW_CODE_USAGE` of the codes are chosen over ``x`` (a short or
        stuck run: blank reconstructions, codes a prior cannot use), what to try."""
        used = len(torch.unique(self.code_indices(x.to(self.codebook.vectors.device))))
        if used >= LOW_CODE_USAGE * self.codebook.size:
            return None
        tries = ["train longer"]
        if self.codebook.update != "ema":
            tries.append("--codebook-update ema")
        if not self.restart_codes:
            tries.append("--restart-codes")
        return (
            f"only {used} of {self.codebook.size} codes used on {len(x)} test images: "
            f"{', or try '.join(tries)} (docs/vqvae.md)"
        )

    # --- codes and pictures ------------------------------------------------------------------
    @torch.no_grad()
    def code_indices(self, x: torch.Tensor) -> torch.Tensor:
        """k(x): the grid of code indices of each data point, shape (N, G)."""
        return self.codebook.nearest(self.encoder(x))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """z_q(x), shape (N, G, D)."""
        return self.codebook.lookup(self.code_indices(x))

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """Means of p(x | z_q) for code grids drawn from the prior, shape (num_samples, D_x);
        ``temperature`` T != 1: from the prior with its logits divided by T (T < 1: sharper
        grids; see :mod:`pyro_vae.models.code_priors`)."""
        k = tempered(self.prior, temperature).sample((num_samples,))
        return self.decode_mean(self.codebook.lookup(k))
