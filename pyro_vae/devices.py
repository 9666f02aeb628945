"""Where the tensors live: the devices every command accepts, and random draws that leave a
device's generator as it was.

Training draws its Monte Carlo samples from the generator of the device its model is on (the
CPU's, or the GPU's under ``--device cuda``); evaluation and figures during training must not
change what training draws next, so they run inside :func:`forked_rng` of that device.
"""

import torch

from pyro_vae.errors import UserError

__all__ = ["DEVICES", "check_device", "forked_rng"]

DEVICES = ("cpu", "cuda")


def check_device(device: str) -> str:
    """``device`` if this machine has it: ``cuda`` without a GPU is one line, not a traceback
    from the first tensor moved there."""
    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)} (got {device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available; use --device cpu")
    return device


def forked_rng(device: torch.device | str):
    """``torch.random.fork_rng`` for work on ``device``: the CPU's generator, and that GPU's
    when ``device`` is one, are restored when the block ends (``torch.manual_seed`` inside
    reseeds both)."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    index = torch.cuda.current_device() if device.index is None else device.index
    return torch.random.fork_rng(devices=[index])
