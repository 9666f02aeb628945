"""Sizes that cannot fit in memory, refused before anything is allocated.

A setting such as ``--z-dim 100000000`` or ``--prior mog:100000000`` would make torch ask for
hundreds of gigabytes: on Linux the allocation may even succeed (memory is overcommitted) and
the kernel kill the process later. :func:`check_memory` refuses such settings in one line that
names the flag, before the data is read, the model built or a run folder made. It compares a
*lower bound* on what the settings need with the machine's memory, so a run it lets through may
still be too large, but a run it refuses could never have started:

- parameters, counted only where the settings fix them: with ``--arch mlp`` the encoder's and
  the mirrored decoder's linear layers from the 784 pixels of an image through
  ``--hidden-dims`` to ``2 * --z-dim`` (a TD-VAE: its first width only), with ``--arch conv``
  the linear layers between the 3136 convolutional features and ``--z-dim``; a built-in prior's
  own (``mog:K``: 2 K z_dim + K, ``vamp:K``: 784 K, ``flow:L``: 12 L z_dim^2); a VQ-VAE's
  codebook (``--codebook-size`` x ``--code-dim``). Each parameter takes 4 bytes, 16 in training
  (the value, its gradient and Adam's two moments);
- in training, one step's activations: the minibatch (``--batch-size``, at most
  ``--limit-train``) times ``--num-particles`` times the units of one pass (784 pixels out,
  every hidden width twice, 3 z_dim), 4 bytes each, counted towards the largest of the three
  factors (the units: towards the larger of the hidden and the latent part).

The memory is the machine's physical memory (``os.sysconf``; 1 TiB where it cannot be read), or
the GPU's for the activations of a ``--device cuda`` run. The flag named is the one whose term
is largest. A torch allocation that fails anyway while a model is built is one line too
(:func:`allocating`).
"""

import contextlib
import os
import re
from collections.abc import Iterator

import torch

from pyro_vae.errors import UserError
from pyro_vae.models.priors import PRIOR_CONTEXT, PRIORS
from pyro_vae.plugins import builtin_arguments

__all__ = [
    "check_memory",
    "memory_terms",
    "physical_memory",
    "allocating",
    "is_out_of_memory",
    "memory_detail",
]

PIXELS = 784  # the pixels of one frame of every built-in data set
CONV_FEATURES = 2 * 32 * 7 * 7  # ConvEncoder's features before its linear layer, 28 x 28 input
BYTES = 4  # float32


def physical_memory() -> int:
    """The machine's physical memory in bytes (1 TiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2**40


def memory_terms(config, training: bool = True) -> dict[str, int]:
    """The lower bound of the module docstring, in bytes, split by the flag each term grows
    with (``"--z-dim"``, ``"--hidden-dims"``, ``"--prior"``, ``"--codebook-size"``,
    ``"--num-particles"`` or ``"--batch-size"``). ``config``: a type-checked TrainConfig."""
    z, hidden = config.z_dim, list(config.hidden_dims)
    if config.model == "tdvae":
        hidden = hidden[:1]
    params: dict[str, int] = {}
    if config.arch == "mlp":
        widths = [PIXELS, *hidden]
        params["--hidden-dims"] = 2 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
        params["--z-dim"] = 3 * z * hidden[-1]
    else:
        params["--z-dim"] = 3 * z * CONV_FEATURES
    params["--prior"] = _prior_parameters(config.prior, z)
    if config.model == "vqvae":
        params["--codebook-size"] = config.codebook_size * config.code_dim
    per_parameter = 4 * BYTES if training else BYTES
    terms = {flag: count * per_parameter for flag, count in params.items()}
    if training:  # counted towards the largest of its three factors
        batch = min(config.batch_size, config.limit_train or config.batch_size)
        widths = {"--hidden-dims": 2 * sum(hidden), "--z-dim": 3 * z}
        units = PIXELS + sum(widths.values())
        factors = {"--batch-size": batch, "--num-particles": config.num_particles}
        factors[max(widths, key=widths.get)] = units
        flag = max(factors, key=factors.get)
        terms[flag] = terms.get(flag, 0) + batch * config.num_particles * units * BYTES
    return terms


def _prior_parameters(spec: str, z_dim: int) -> int:
    """The parameters of a built-in prior (0 for others: their size is their own)."""
    found = builtin_arguments(spec, PRIORS, "--prior", PRIOR_CONTEXT)
    if found is None or found[0] == "normal":
        return 0
    name, kwargs = found
    count = kwargs.get("num_components", kwargs.get("num_layers", 0))
    if not isinstance(count, int) or count <= 0:
        return 0  # the prior's own check refuses it with its own message
    if name == "mog":
        return count * (2 * z_dim + 1)
    if name == "vamp":
        return count * PIXELS
    return 12 * count * z_dim * z_dim


def check_memory(config, training: bool = True) -> None:
    """Refuse settings whose lower bound (:func:`memory_terms`) exceeds the memory, in one line
    naming the largest term's flag."""
    terms = memory_terms(config, training)
    memory, where = physical_memory(), "this machine's memory"
    if training and config.device == "cuda" and torch.cuda.is_available():
        memory, where = torch.cuda.get_device_properties(0).total_memory, "the GPU's memory"
    need = sum(terms.values())
    if need <= memory:
        return
    flag = max(terms, key=terms.get)
    value = {
        "--z-dim": config.z_dim,
        "--hidden-dims": " ".join(map(str, config.hidden_dims)),
        "--prior": config.prior,
        "--codebook-size": config.codebook_size,
        "--num-particles": config.num_particles,
        "--batch-size": config.batch_size,
    }[flag]
    what = "to train" if training else "to hold the model"
    smaller = "fewer components or layers" if flag == "--prior" else "a smaller value"
    raise UserError(
        f"{flag} {value}: these settings need at least {_size(need)} {what}, more than "
        f"{where} ({_size(memory)}); give {flag} {smaller} (docs/reliability.md)"
    )


def _size(count: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed (torch's CPU allocator raises a plain
    RuntimeError saying "can't allocate memory")."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate" in text or "out of memory" in text)


@contextlib.contextmanager
def allocating(what: str) -> Iterator[None]:
    """Turn a failed allocation inside the block into one line that says ``what`` was being
    built and which flags set its size."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise UserError(
            f"not enough memory to build {what} ({memory_detail(exc)}); choose a smaller "
            "--z-dim, --hidden-dims or --prior"
        ) from None


def memory_detail(exc: BaseException) -> str:
    """What a failed allocation says, in one short line (torch's "[enforce fail at ...] err ==
    0." prefix dropped)."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", text)
