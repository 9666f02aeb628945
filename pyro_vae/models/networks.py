"""Encoder and decoder networks: plain ``torch.nn`` modules, registered with Pyro by the VAE.

The encoder maps x of shape (batch, D) to the parameters (loc, scale) of the diagonal Gaussian
q(z|x), each of shape (batch, z_dim). The decoder maps z of shape (..., z_dim) to the
likelihood's parameters, shape (..., P * D) where P is the likelihood's ``params_per_dim``
(1, or 2 for a decoder-predicted Gaussian scale); leading dimensions are free so that Pyro can
stack several particles in front of the batch.

Any ``nn.Module`` with these signatures can be passed to :class:`~pyro_vae.models.vae.VAE`;
:func:`check_networks` runs both once on a dummy batch and names the expected shapes when they
do not match. Built in (``--arch``): the MLP pair, and a small convolutional pair for 28 x 28
images (two stride-2 convolutions each way).

Networks of your own replace either half of the pair from the command line (``--encoder``,
``--decoder``; :mod:`pyro_vae.plugins`): ``my_nets:Encoder``, ``path/to/nets.py:Decoder(width=
256)``, or a name in the entry-point group ``pyro_vae.encoders`` / ``pyro_vae.decoders``. Their
constructors may ask for :data:`ENCODER_CONTEXT` / :data:`DECODER_CONTEXT` by parameter name.

The VQ-VAE's networks (:func:`build_grid_networks`) map x to a grid of G vectors of size D,
shape (batch, G, D), and such a grid back to the likelihood's parameters: ``conv`` keeps the
image's layout (a (h/4) x (w/4) grid), ``mlp`` has G = ``--z-dim`` positions without one.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.plugins import build, check_spec

__all__ = [
    "ARCHS",
    "ACTIVATIONS",
    "ENCODER_CONTEXT",
    "DECODER_CONTEXT",
    "check_network_spec",
    "grid_sides",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "mlp",
    "build_networks",
    "check_networks",
    "GridConvEncoder",
    "GridConvDecoder",
    "GridMLPEncoder",
    "GridMLPDecoder",
    "build_grid_networks",
]

ARCHS = ("mlp", "conv")
#: What a network's constructor may ask for by parameter name (``hidden_dims``: --hidden-dims as
#: given; ``out_dim`` = ``params_per_dim * data_dim``, the decoder's output width).
ENCODER_CONTEXT = ("data_dim", "z_dim", "hidden_dims", "image_shape")
DECODER_CONTEXT = ("z_dim", "data_dim", "hidden_dims", "image_shape", "params_per_dim", "out_dim")
_CONTEXTS = {"encoder": ENCODER_CONTEXT, "decoder": DECODER_CONTEXT}


#: ``--activation``: the nonlinearity of the MLPs' hidden layers (Burda et al. 2016 used tanh).
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(
    in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "relu"
) -> nn.Sequential:
    """A multilayer perceptron in_dim -> hidden_dims... -> out_dim with ``activation`` (a name
    in :data:`ACTIVATIONS`) after each hidden layer and no final activation."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), ACTIVATIONS[activation]()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """q_phi(z|x) = N(loc(x), diag scale(x)^2) with one MLP producing both heads.

    The scale is ``softplus(.) + min_scale``: positive, smooth, and bounded away from zero so
    that log q(z|x) stays finite early in training.
    """

    def __init__(
        self,
        data_dim: int,
        hidden_dims: Sequence[int],
        z_dim: int,
        min_scale: float = 1e-4,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.net = mlp(data_dim, hidden_dims, 2 * z_dim, activation)
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + self.min_scale


class MLPDecoder(nn.Module):
    """z -> the likelihood's parameters (Bernoulli logits or Gaussian means), one per pixel."""

    def __init__(
        self, z_dim: int, hidden_dims: Sequence[int], data_dim: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.net = mlp(z_dim, hidden_dims, data_dim, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvEncoder(nn.Module):
    """q_phi(z|x) for h x w images: two 4x4 stride-2 convolutions, then a linear layer.

    x (batch, h * w) -> (loc, scale), each (batch, z_dim); h and w must be divisible by 4.
    """

    def __init__(
        self, image_shape: tuple[int, int], z_dim: int, channels: int = 32, min_scale: float = 1e-4
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        h, w = self.image_shape
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * (h // 4) * (w // 4), 2 * z_dim),
        )
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x.reshape(-1, 1, *self.image_shape)).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + self.min_scale


class ConvDecoder(nn.Module):
    """z (..., z_dim) -> likelihood parameters (..., out_channels * h * w), mirroring ConvEncoder.

    Leading dimensions (particles, batch) are flattened into one batch for the convolutions and
    restored afterwards; with ``out_channels`` 2 the first h * w outputs are channel 0.
    """

    def __init__(
        self, z_dim: int, image_shape: tuple[int, int], out_channels: int = 1, channels: int = 32
    ) -> None:
        super().__init__()
        h, w = self.image_shape = tuple(image_shape)
        self.hidden_shape = (2 * channels, h // 4, w // 4)
        self.net = nn.Sequential(
            nn.Linear(z_dim, 2 * channels * (h // 4) * (w // 4)),
            nn.ReLU(),
            nn.Unflatten(1, self.hidden_shape),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z.reshape(-1, z.shape[-1]))
        return out.reshape(*z.shape[:-1], -1)


def build_networks(
    arch: str,
    data_dim: int,
    z_dim: int,
    hidden_dims: Sequence[int],
    likelihood: nn.Module,
    image_shape: tuple[int, int] = (28, 28),
    encoder: str | None = None,
    decoder: str | None = None,
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder ``--arch`` names: ``mlp`` (the decoder mirrors ``hidden_dims``)
    or ``conv`` (``image_shape`` images; ``hidden_dims`` unused); the decoder's output has the
    ``likelihood``'s ``params_per_dim`` values per data dimension. ``encoder`` / ``decoder``:
    specs of networks of your own that replace that half of the pair; ``activation``: the
    MLPs' nonlinearity (:data:`ACTIVATIONS`)."""
    params_per_dim = getattr(likelihood, "params_per_dim", 1)
    context = {
        "data_dim": data_dim,
        "z_dim": z_dim,
        "hidden_dims": tuple(hidden_dims),
        "image_shape": tuple(image_shape),
        "params_per_dim": params_per_dim,
        "out_dim": params_per_dim * data_dim,
    }
    pair = (None, None)
    if encoder is None or decoder is None:
        pair = _arch_networks(
            arch, data_dim, z_dim, hidden_dims, params_per_dim, image_shape, activation
        )
    if encoder is not None:
        pair = (build(encoder, "encoder", "--encoder", {}, context, expect=nn.Module), pair[1])
    if decoder is not None:
        pair = (pair[0], build(decoder, "decoder", "--decoder", {}, context, expect=nn.Module))
    return pair


def check_network_spec(spec: str, kind: str) -> None:
    """Check an ``--encoder`` / ``--decoder`` spec (``kind``) without building it."""
    check_spec(spec, kind, f"--{kind}", {}, _CONTEXTS[kind], nn.Module)


def _arch_networks(arch, data_dim, z_dim, hidden_dims, params_per_dim, image_shape, activation):
    if arch == "mlp":
        encoder = MLPEncoder(data_dim, hidden_dims, z_dim, activation=activation)
        out_dim = params_per_dim * data_dim
        decoder = MLPDecoder(z_dim, tuple(reversed(hidden_dims)), out_dim, activation)
        return encoder, decoder
    if arch == "conv":
        if image_shape[0] * image_shape[1] != data_dim or min(image_shape) % 4:
            raise UserError("--arch conv needs h x w images with h, w divisible by 4, D = h * w")
        encoder = ConvEncoder(image_shape, z_dim)
        return encoder, ConvDecoder(z_dim, image_shape, out_channels=params_per_dim)
    raise UserError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")


def check_networks(
    encoder: nn.Module, decoder: nn.Module, data_dim: int, z_dim: int, out_dim: int
) -> None:
    """Run the networks once on a dummy batch; wrong output shapes raise a :class:`UserError`.

    Expected: encoder x (batch, data_dim) -> (loc, scale), each (batch, z_dim); decoder
    z (particles, batch, z_dim) -> (particles, batch, out_dim). Modules are put in eval mode for
    the check (no batch-norm statistics updated) and restored afterwards.
    """
    modes = [(m, m.training) for m in (encoder, decoder)]
    try:
        for m, _ in modes:
            m.eval()
        with torch.no_grad():
            _check_encoder(encoder, data_dim, z_dim)
            _check_decoder(decoder, z_dim, out_dim)
    finally:
        for m, mode in modes:
            m.train(mode)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.zeros(())).device


def _call(net: nn.Module, x: torch.Tensor, expected: str):
    try:
        return net(x)
    except (RuntimeError, ValueError, TypeError) as exc:
        name = type(net).__name__
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{name} failed on an input of shape {tuple(x.shape)} (expected to return "
            f"{expected}): {reason}"
        ) from None


def _check_encoder(encoder: nn.Module, data_dim: int, z_dim: int) -> None:
    batch = 3
    expected = f"(loc, scale), each of shape ({batch}, {z_dim})"
    out = _call(encoder, torch.zeros(batch, data_dim, device=_device(encoder)), expected)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise UserError(
            f"the encoder must map x ({batch}, {data_dim}) to {expected}; got {type(out).__name__}"
        )
    shapes = [tuple(t.shape) if torch.is_tensor(t) else type(t).__name__ for t in out]
    if any(s != (batch, z_dim) for s in shapes):
        raise UserError(
            f"the encoder must map x ({batch}, {data_dim}) to {expected}; got shapes {shapes}"
        )


def _check_decoder(decoder: nn.Module, z_dim: int, out_dim: int) -> None:
    lead = (2, 3)  # particles x batch: the decoder must accept any leading dimensions
    expected = f"parameters of shape {(*lead, out_dim)}"
    out = _call(decoder, torch.zeros(*lead, z_dim, device=_device(decoder)), expected)
    got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
    if got != (*lead, out_dim):
        raise UserError(
            f"the decoder must map z {(*lead, z_dim)} to likelihood parameters of shape "
            f"{(*lead, out_dim)} (leading dimensions kept); got {got}"
        )


def grid_sides(image_shape: tuple[int, int], halvings: int = 2) -> list[tuple[int, int]]:
    """The (h, w) of the conv VQ-VAE's feature maps after each halving: the first two (4x4
    stride-2 convolutions) halve exactly, each further one (3x3, stride 2, padding 1) rounds up:
    28 -> 14 -> 7 -> 4 -> 2 -> 1. The last is the code grid."""
    h, w = image_shape
    sides = []
    for i in range(halvings):
        h, w = (h // 2, w // 2) if i < 2 else (-(-h // 2), -(-w // 2))
        sides.append((h, w))
    return sides


class GridConvEncoder(nn.Module):
    """x (batch, h * w) -> a grid of D-vectors, shape (batch, G, D): two 4x4 stride-2
    convolutions ((h/4) x (w/4)), ``halvings - 2`` more 3x3 stride-2 ones (each halves the grid's
    sides, rounding up: 7x7 -> 4x4 -> 2x2 -> 1x1), a 3x3 convolution and a 1x1 projection to D
    channels."""

    def __init__(
        self, image_shape: tuple[int, int], code_dim: int, channels: int = 32, halvings: int = 2
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        extra = []
        for _ in range(halvings - 2):
            extra += [nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
            nn.ReLU(),
            *extra,
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * channels, code_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x.reshape(-1, 1, *self.image_shape))
        return out.flatten(2).transpose(1, 2)


class GridConvDecoder(nn.Module):
    """A grid (..., G, D) -> likelihood parameters (..., out_channels * h * w), mirroring
    :class:`GridConvEncoder` (its transposed convolutions restore each side exactly);
    leading dimensions are kept."""

    def __init__(
        self,
        code_dim: int,
        image_shape: tuple[int, int],
        out_channels: int = 1,
        channels: int = 32,
        halvings: int = 2,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        sides = grid_sides(self.image_shape, halvings)
        self.grid = sides[-1]
        extra = []
        for small, large in zip(reversed(sides[2:]), reversed(sides[1:-1]), strict=True):
            padding = (large[0] - 2 * small[0] + 1, large[1] - 2 * small[1] + 1)
            up = nn.ConvTranspose2d(2 * channels, 2 * channels, 3, 2, 1, output_padding=padding)
            extra += [up, nn.ReLU()]
        self.net = nn.Sequential(
            nn.Conv2d(code_dim, 2 * channels, 3, padding=1),
            nn.ReLU(),
            *extra,
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead, (g, d) = z.shape[:-2], z.shape[-2:]
        grid = z.reshape(-1, g, d).transpose(1, 2).reshape(-1, d, *self.grid)
        return self.net(grid).reshape(*lead, -1)


class GridMLPEncoder(nn.Module):
    """x (batch, D_x) -> G vectors of size D, shape (batch, G, D), by one MLP."""

    def __init__(self, data_dim: int, hidden_dims: Sequence[int], positions: int, code_dim: int):
        super().__init__()
        self.shape = (positions, code_dim)
        self.net = mlp(data_dim, hidden_dims, positions * code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(*x.shape[:-1], *self.shape)


class GridMLPDecoder(nn.Module):
    """G vectors (..., G, D) -> likelihood parameters (..., out_dim), by one MLP."""

    def __init__(self, positions: int, code_dim: int, hidden_dims: Sequence[int], out_dim: int):
        super().__init__()
        self.net = mlp(positions * code_dim, hidden_dims, out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.flatten(-2))


def build_grid_networks(
    arch: str,
    data_dim: int,
    code_dim: int,
    positions: int,
    hidden_dims: Sequence[int],
    likelihood: nn.Module,
    image_shape: tuple[int, int] = (28, 28),
    halvings: int = 2,
) -> tuple[nn.Module, nn.Module, int]:
    """The VQ-VAE's encoder and decoder for ``--arch`` and the number of grid positions G:
    ``conv`` ((h/4) x (w/4) positions, fewer with ``halvings`` above 2: :func:`grid_sides`) or
    ``mlp`` (``positions`` of them, mirrored ``hidden_dims``)."""
    params_per_dim = getattr(likelihood, "params_per_dim", 1)
    if arch == "mlp":
        encoder = GridMLPEncoder(data_dim, hidden_dims, positions, code_dim)
        out_dim = params_per_dim * data_dim
        decoder = GridMLPDecoder(positions, code_dim, tuple(reversed(hidden_dims)), out_dim)
        return encoder, decoder, positions
    if arch == "conv":
        if image_shape[0] * image_shape[1] != data_dim or min(image_shape) % 4:
            raise UserError("--arch conv needs h x w images with h, w divisible by 4, D = h * w")
        decoder = GridConvDecoder(
            code_dim, image_shape, out_channels=params_per_dim, halvings=halvings
        )
        grid = decoder.grid[0] * decoder.grid[1]
        return GridConvEncoder(image_shape, code_dim, halvings=halvings), decoder, grid
    raise UserError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
