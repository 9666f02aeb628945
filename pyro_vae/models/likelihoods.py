"""Likelihoods p_theta(x|z): turn the decoder's output into a distribution over a data point.

The likelihood protocol
-----------------------
A likelihood is an ``nn.Module`` with

- ``forward(params)``: decoder output of shape (..., params_per_dim * D) -> a Pyro distribution
  with event shape (D,);
- ``mean(params)``: the mean of p(x|z), shape (..., D), for reconstructions and samples;
- ``params_per_dim`` (int attribute, default 1): how many decoder outputs per data dimension
  (2 for a Gaussian whose scale the decoder predicts: the first D are the means, the last D
  the scales before a softplus);
- ``check_data(x)`` (optional): raise :class:`~pyro_vae.errors.UserError` when ``x`` lies outside
  the support, e.g. non-binary data under a Bernoulli. It is called once on the data before
  training (:func:`check_data`), never in the training loop.

Parameters the likelihood owns (a learned Gaussian scale) are model-side parameters (theta).

Built in, by ``--likelihood``:

- ``bernoulli``: x_d ~ Bernoulli(sigmoid(logits_d)), binary data only.
- ``gaussian``: x_d ~ N(loc_d, sigma_d^2) with the scale chosen by ``--gaussian-scale``:
  ``fixed:S`` (sigma = S, not learned), ``global`` (one learned sigma), ``pixel`` (one learned
  sigma per pixel, the default) or ``decoder`` (sigma_d(z) predicted by the decoder, the
  N(mu(z), sigma(z)^2) of the seed slides).
- ``continuous-bernoulli``: the continuous Bernoulli of Loaiza-Ganem and Cunningham (2019), a
  proper density on [0, 1] for grey-level data without binarizing.

A likelihood of your own is named like a prior (:mod:`pyro_vae.plugins`): ``my_liks:StudentT``,
``path/to/liks.py:StudentT(df=4)``, or a name in the entry-point group
``pyro_vae.likelihoods``; its constructor may ask for ``data_dim`` and ``gaussian_scale``
(:data:`LIKELIHOOD_CONTEXT`).
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.plugins import build, check_spec

__all__ = [
    "LIKELIHOODS",
    "LIKELIHOOD_CONTEXT",
    "LIKELIHOOD_HELP",
    "GAUSSIAN_SCALE_HELP",
    "IndependentBernoulli",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "ContinuousBernoulliLikelihood",
    "parse_gaussian_scale",
    "check_likelihood_spec",
    "make_likelihood",
    "check_data",
]

LIKELIHOODS = ("bernoulli", "gaussian", "continuous-bernoulli")
LIKELIHOOD_HELP = (
    f"{', '.join(LIKELIHOODS)}, a name an installed package adds, or your own: module:Class or "
    "path/to/file.py:Class, optionally with (key=value, ...)"
)
#: What a likelihood's constructor may ask for by parameter name.
LIKELIHOOD_CONTEXT = ("data_dim", "gaussian_scale")
GAUSSIAN_SCALE_HELP = "fixed:S (S > 0), global, pixel or decoder"


def _check_range(x: torch.Tensor, name: str, hint: str) -> None:
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise UserError(f"the {name} likelihood needs data in [0, 1]; {hint}")


class IndependentBernoulli(dist.Independent):
    """``dist.Bernoulli(logits=logits).to_event(1)`` with the event's log-probability summed
    inside one call, -sum_d BCE(logits_d, x_d), negated after the sum.

    The same distribution and values as ``Bernoulli(logits).to_event(1)``; torch's Bernoulli
    negates the full (batch, D) tensor of per-pixel terms before summing, one pass over it more
    forward and backward: 0.2-1.2 ms of a 10 ms training step of the default MNIST VAE
    (docs/benchmarks.md).
    Build it with :meth:`from_logits`.
    """

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> "IndependentBernoulli":
        return cls(dist.Bernoulli(logits=logits), 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.base_dist.logits
        if logits.shape != value.shape:
            logits, value = torch.broadcast_tensors(logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class BernoulliLikelihood(nn.Module):
    """x_d ~ Bernoulli(sigmoid(logits_d)): for binary data only (binarize MNIST first)."""

    params_per_dim = 1

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return IndependentBernoulli.from_logits(logits)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities, the picture of p(x|z) that figures show."""
        return torch.sigmoid(logits)

    def check_data(self, x: torch.Tensor) -> None:
        if not ((x == 0) | (x == 1)).all():
            raise UserError(
                "the bernoulli likelihood needs binary data (0 or 1): use --binarize "
                "dynamic|static, or --likelihood continuous-bernoulli|gaussian for intensities"
            )


class GaussianLikelihood(nn.Module):
    """x ~ N(loc(z), diag sigma^2), with sigma fixed, learned (global or per pixel) or decoded.

    Learned and decoded scales are ``softplus(raw) + min_scale``; the floor keeps the density
    bounded on pixels that are constant in the data (MNIST's border), where an unbounded
    sigma -> 0 would dominate the loss.

    Args:
        data_dim: D.
        scale: ``"fixed:S"``, ``"global"``, ``"pixel"`` or ``"decoder"``.
        init_scale: the starting sigma of the learned modes.
        min_scale: the floor of learned and decoded scales.
    """

    def __init__(
        self, data_dim: int, scale: str = "pixel", init_scale: float = 0.5, min_scale: float = 0.01
    ) -> None:
        super().__init__()
        self.mode, fixed = parse_gaussian_scale(scale)
        if not init_scale > min_scale:
            raise ValueError("init_scale must exceed min_scale")
        self.min_scale = min_scale
        self.params_per_dim = 2 if self.mode == "decoder" else 1
        raw = math.log(math.expm1(init_scale - min_scale))  # inverse softplus
        if self.mode == "fixed":
            self.register_buffer("fixed_scale", torch.tensor(fixed))
        elif self.mode in ("global", "pixel"):
            size = (1,) if self.mode == "global" else (data_dim,)
            self.raw_scale = nn.Parameter(torch.full(size, raw))

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "decoder":
            loc, raw = params.chunk(2, dim=-1)
            return loc, F.softplus(raw) + self.min_scale
        if self.mode == "fixed":
            return params, self.fixed_scale.expand_as(params)
        return params, (F.softplus(self.raw_scale) + self.min_scale).expand_as(params)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self._split(params)
        return dist.Normal(loc, scale).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._split(params)[0].clamp(0.0, 1.0)

    def check_data(self, x: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            raise UserError("the gaussian likelihood needs finite data (found NaN or inf)")


class ContinuousBernoulliLikelihood(nn.Module):
    """x_d ~ ContinuousBernoulli(sigmoid(logits_d)) on [0, 1] (Loaiza-Ganem and Cunningham 2019).

    Unlike a Bernoulli on grey levels, this is a normalised density on [0, 1]: it adds the
    log-normaliser log C(lambda) that the Bernoulli "likelihood" on non-binary data leaves out.
    Its mean is not sigmoid(logits); figures use the true mean.
    """

    params_per_dim = 1

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=logits).to_event(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=logits).mean

    def check_data(self, x: torch.Tensor) -> None:
        _check_range(x, "continuous-bernoulli", "rescale the data or use --likelihood gaussian")


def parse_gaussian_scale(spec: str) -> tuple[str, float]:
    """``"fixed:0.1"`` -> ``("fixed", 0.1)``; other modes -> ``(mode, 0.0)``."""
    if spec in ("global", "pixel", "decoder"):
        return spec, 0.0
    kind, _, number = spec.partition(":")
    if kind == "fixed":
        try:
            value = float(number)
        except ValueError:
            value = float("nan")
        if math.isfinite(value) and value > 0:
            return kind, value
    raise UserError(f"bad gaussian scale {spec!r}; use {GAUSSIAN_SCALE_HELP}")


def _builtin_likelihoods() -> dict:
    def gaussian(data_dim: int, gaussian_scale: str = "pixel") -> GaussianLikelihood:
        return GaussianLikelihood(data_dim, gaussian_scale)

    return {
        "bernoulli": BernoulliLikelihood,
        "gaussian": gaussian,
        "continuous-bernoulli": ContinuousBernoulliLikelihood,
    }


def check_likelihood_spec(spec: str) -> None:
    """Check a ``--likelihood`` spec (name, arguments, importability) without building it."""
    check_spec(
        spec, "likelihood", "--likelihood", _builtin_likelihoods(), LIKELIHOOD_CONTEXT, nn.Module
    )


def make_likelihood(name: str, data_dim: int, gaussian_scale: str = "pixel") -> nn.Module:
    """Build a likelihood by its ``--likelihood`` spec."""
    context = {"data_dim": data_dim, "gaussian_scale": gaussian_scale}
    return build(
        name, "likelihood", "--likelihood", _builtin_likelihoods(), context, expect=nn.Module
    )


def check_data(likelihood: nn.Module, x: torch.Tensor) -> None:
    """Reject ``x`` outside the likelihood's support (once, before training), if it can tell."""
    check = getattr(likelihood, "check_data", None)
    if check is not None:
        check(x)
