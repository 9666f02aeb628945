"""Priors over the VQ-VAE's grid of code indices, and the protocol one of your own follows.

The code-prior protocol
-----------------------
A code prior is an ``nn.Module`` whose ``forward()`` (no arguments) returns a distribution over
grids of code indices: event shape ``(G,)`` (the G = h * w grid positions in raster order), empty
batch shape, values integers in [0, K). ``log_prob(k)`` must accept k of shape (..., G) and return
shape (...); ``sample(shape)`` is only used for pictures. Its parameters are model-side (theta).
``forward(temperature=T)`` may also be accepted (all built-in priors do): the same prior with its
logits divided by T, for sampling sharper (T < 1) or more varied (T > 1) grids; the bound and
every fit use T = 1, and asking a prior without the parameter for T != 1 is a clear error.
The VQ-VAE wraps it in :class:`CodeVectors`, which puts the same probabilities on the code
vectors, so that the model's latent site can carry the straight-through gradient
(:mod:`pyro_vae.models.vqvae`).

Stage 1 trains the VQ-VAE under :class:`UniformCodePrior`, as the paper does; stage 2
(:mod:`pyro_vae.runs.code_prior`) fits another prior by maximum likelihood on the code grids of
the training set, which is the M-step of the VQ-VAE's bound in the prior alone: the bound
log p(x|z_q(x)) + log p(k(x)) depends on the prior only through log p(k(x)).

Built in, by their ``fit-prior --prior`` spec:

- ``uniform``: p(k) = K^-G, no parameters (stage 1).
- ``categorical``: independent categoricals per position, p(k) = prod_i Cat(k_i; pi_i), fitted
  in closed form (the smoothed code frequencies per position; ``categorical(smoothing=1)``).
- ``transformer`` or ``transformer:L``: an autoregressive prior p(k) = prod_i p(k_i | k_<i) in
  raster order, a small causal transformer (L layers, default 2) over the code tokens; sampling
  is ancestral, one position at a time. ``transformer(num_layers=4, width=128)`` reaches the
  other constructor arguments.

A code prior of your own is named like any part (:mod:`pyro_vae.plugins`):
``my_priors:PixelCNN``, ``path/to/file.py:PixelCNN(layers=5)``, or a name in the entry-point
group ``pyro_vae.code_priors``; its constructor may ask for ``num_codes`` (K) and
``num_positions`` (G) by parameter name. A prior whose maximum-likelihood fit has a closed form
may define ``fit_exact(grids)`` (grids: the training set's code grids, (N, G)); ``fit-prior``
then calls it once instead of taking gradient steps.
"""

import inspect
import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from pyro_vae.errors import UserError, check_count
from pyro_vae.plugins import build, check_spec

__all__ = [
    "CODE_PRIOR_HELP",
    "CodeVectors",
    "UniformCodePrior",
    "CategoricalCodePrior",
    "TransformerCodePrior",
    "AutoregressiveCodes",
    "tempered",
    "check_code_prior_spec",
    "CODE_PRIORS",
    "CODE_PRIOR_CONTEXT",
    "make_code_prior",
]

CODE_PRIOR_HELP = (
    "uniform, categorical, transformer[:L] (L layers), a name an installed package adds, or your "
    "own: module:Class or path/to/file.py:Class, optionally with (key=value, ...)"
)


class CodeVectors(dist.TorchDistribution):
    """A distribution over grids of code vectors (..., G, D) with the probabilities that
    ``indices`` (event shape (G,)) gives their code indices.

    ``log_prob(z)`` looks up the code index of each vector of z (nearest code, so exact for z
    on the codebook) and scores the indices; ``sample`` draws indices and returns their codes.
    Only the indices carry probability: a vector off the codebook is scored as its nearest code.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(self, indices: dist.TorchDistribution, codebook, validate_args=None) -> None:
        self.indices, self.codebook = indices, codebook
        event_shape = indices.event_shape + codebook.vectors.shape[-1:]
        super().__init__(indices.batch_shape, event_shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.indices.log_prob(self.codebook.indices_of(value))

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        return self.codebook.lookup(self.indices.sample(sample_shape))


def _positionwise(logits: torch.Tensor, temperature: float) -> dist.TorchDistribution:
    """Independent categoricals per position with ``logits`` (G, K) divided by ``temperature``."""
    return dist.Categorical(logits=logits / _checked_temperature(temperature)).to_event(1)


class UniformCodePrior(nn.Module):
    """p(k) = K^-G: every grid of codes equally likely; log p(k) = -G log K."""

    def __init__(self, num_codes: int, num_positions: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.zeros(num_positions, num_codes))

    def forward(self, temperature: float = 1.0) -> dist.TorchDistribution:
        return _positionwise(self.logits, temperature)


class CategoricalCodePrior(nn.Module):
    """Independent categoricals per grid position (start: uniform).

    Its maximum-likelihood fit has a closed form, the code frequencies at each position, which
    :meth:`fit_exact` computes with additive smoothing: pi_ij = (n_ij + a) / (N + K a), n_ij the
    number of training grids with code j at position i (``smoothing`` a = 0.5 by default, the
    Jeffreys prior's estimate: a code never seen at a position keeps a finite log-probability).
    The logits stay parameters, so the prior can also be trained by gradient steps in a model.
    """

    def __init__(self, num_codes: int, num_positions: int, smoothing: float = 0.5) -> None:
        super().__init__()
        if not smoothing >= 0:
            raise UserError(f"categorical: smoothing must not be negative, got {smoothing}")
        self.smoothing = smoothing
        self.logits = nn.Parameter(torch.zeros(num_positions, num_codes))

    def forward(self, temperature: float = 1.0) -> dist.TorchDistribution:
        return _positionwise(self.logits, temperature)

    @torch.no_grad()
    def fit_exact(self, grids: torch.Tensor) -> None:
        """Set the logits to the smoothed log-frequencies of the codes of ``grids`` (N, G)."""
        positions, num_codes = self.logits.shape
        flat = grids.reshape(-1, positions).long()
        offsets = torch.arange(positions, device=flat.device) * num_codes
        counts = torch.bincount((flat + offsets).reshape(-1), minlength=positions * num_codes)
        counts = counts.reshape(positions, num_codes).to(self.logits)
        probs = (counts + self.smoothing) / (len(flat) + num_codes * self.smoothing)
        self.logits.copy_(probs.log())


class TransformerCodePrior(nn.Module):
    """p(k) = prod_i p(k_i | k_<i): a causal transformer over the raster sequence of codes.

    Input at position i is the embedding of k_{i-1} (a start token at i = 0) plus a learned
    position embedding; a causal attention mask keeps position i from seeing k_>=i, so its
    output, mapped to K logits, is p(k_i | k_<i). No dropout: log p is deterministic.
    """

    def __init__(
        self,
        num_codes: int,
        num_positions: int,
        num_layers: int = 2,
        width: int = 64,
        heads: int = 4,
    ) -> None:
        super().__init__()
        for value, what in ((num_layers, "num_layers"), (width, "width"), (heads, "heads")):
            check_count(value, f"transformer: {what}")
        if width % heads:
            raise UserError(f"transformer: width {width} must be divisible by heads {heads}")
        self.num_codes, self.num_positions = num_codes, num_positions
        self.tokens = nn.Embedding(num_codes + 1, width)  # the last token is "start"
        self.positions = nn.Parameter(0.02 * torch.randn(num_positions, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_codes)
        mask = nn.Transformer.generate_square_subsequent_mask(num_positions)
        self.register_buffer("causal_mask", mask, persistent=False)

    def logits(self, k: torch.Tensor) -> torch.Tensor:
        """Logits of p(k_i | k_<i) for every position, shape (..., L, K), from k (..., L):
        the whole grid (L = G) or its first L positions (the causal mask makes position i's
        logits depend on k_<i alone, so a prefix gives the same logits as the grid)."""
        length = k.shape[-1]
        flat = k.reshape(-1, length)
        start = torch.full_like(flat[:, :1], self.num_codes)
        h = self.tokens(torch.cat([start, flat[:, :-1]], 1)) + self.positions[:length]
        h = self.body(h, mask=self.causal_mask[:length, :length], is_causal=True)
        return self.head(h).reshape(*k.shape, self.num_codes)

    def forward(self, temperature: float = 1.0) -> "AutoregressiveCodes":
        return AutoregressiveCodes(self, temperature)


class AutoregressiveCodes(dist.TorchDistribution):
    """The distribution of a :class:`TransformerCodePrior` at ``temperature`` T: every
    conditional p(k_i | k_<i) with its logits divided by T (T = 1: the fitted prior, the one
    the bound uses; T < 1: sharper conditionals). One network pass scores a grid; sampling is
    ancestral, position by position, each pass over the prefix drawn so far."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(
        self, prior: TransformerCodePrior, temperature: float = 1.0, validate_args=None
    ) -> None:
        self.prior, self.temperature = prior, _checked_temperature(temperature)
        super().__init__(torch.Size(), (prior.num_positions,), validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.prior.logits(value) / self.temperature
        nll = F.cross_entropy(  # Categorical's log_prob, 3x faster
            logits.reshape(-1, logits.shape[-1]), value.reshape(-1), reduction="none"
        )
        return -nll.reshape(value.shape).sum(-1)

    @torch.no_grad()
    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        n = int(torch.Size(sample_shape).numel())
        device = self.prior.head.weight.device
        k = torch.zeros(n, self.prior.num_positions, dtype=torch.long, device=device)
        for i in range(self.prior.num_positions):
            logits = self.prior.logits(k[:, : i + 1])[:, i] / self.temperature
            k[:, i] = dist.Categorical(logits=logits).sample()
        return k.reshape(*sample_shape, self.prior.num_positions)


def tempered(prior: nn.Module, temperature: float = 1.0) -> dist.TorchDistribution:
    """The distribution of code prior ``prior`` at ``temperature`` (``prior()`` at T = 1)."""
    if temperature == 1:
        return prior()
    _checked_temperature(temperature)
    if "temperature" not in inspect.signature(prior.forward).parameters:
        raise UserError(
            f"the code prior {type(prior).__name__} takes no temperature (its forward() has no "
            "temperature parameter): sample it at temperature 1"
        )
    return prior(temperature=temperature)


def _checked_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise UserError(f"a temperature must be a positive number, got {temperature!r}")
    return float(temperature)


#: The built-in code priors by ``fit-prior --prior`` name, and what their constructors are given.
CODE_PRIORS = {
    "uniform": UniformCodePrior,
    "categorical": CategoricalCodePrior,
    "transformer": TransformerCodePrior,
}
CODE_PRIOR_CONTEXT = ("num_codes", "num_positions")


def check_code_prior_spec(spec: str) -> None:
    """Check a ``fit-prior --prior`` spec without building it."""
    check_spec(spec, "code_prior", "--prior", CODE_PRIORS, CODE_PRIOR_CONTEXT, nn.Module)


def make_code_prior(spec: str, num_codes: int, num_positions: int) -> nn.Module:
    """The code prior of a ``fit-prior --prior`` spec."""
    context = {"num_codes": num_codes, "num_positions": num_positions}
    return build(spec, "code_prior", "--prior", CODE_PRIORS, context, expect=nn.Module)
