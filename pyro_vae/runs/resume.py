"""Continuing a run from its checkpoint, exactly.

``pyro-vae train --resume RUN_DIR`` takes the settings saved in ``RUN_DIR/config.json``; flags
given on the command line must agree with them, except those that do not change the
computation (``--epochs`` to train longer, ``--quiet``, ``--data-dir``, ``--device``,
``--checkpoint-every``, ``--early-stopping``, ``--tensorboard``). The checkpoint restores the
model, guide, prior and likelihood parameters, every optimizer's state, the trainer's own state
(e.g. the EM aggressive flag), the learning-rate schedule, the best validation epoch and the
torch, data, numpy and Python RNG states, so on CPU a resumed run ends with the same parameters,
bit for bit, as one that was never interrupted.

Under torchrun every rank loads the checkpoint rank 0 reads and restores its own RNG states; a
run is resumed with the number of processes it was trained with (it sets the minibatch).
"""

import random
from pathlib import Path

import numpy as np
import torch

from pyro_vae import distributed
from pyro_vae.data.images import recorded_data_dir
from pyro_vae.errors import UserError
from pyro_vae.plugins import absolute_file_spec
from pyro_vae.runs.config import PART_FIELDS, TrainConfig, check_parts
from pyro_vae.runs.folder import Run

__all__ = ["resume_config", "restore", "rng_states", "saved_settings", "set_rng_states"]

# Settings a resumed run may change: they do not alter what the remaining epochs compute.
ADJUSTABLE = (
    "epochs",
    "quiet",
    "data_dir",
    "device",
    "checkpoint_every",
    "early_stopping",
    "tensorboard",
    "trust_plugins",
)
NOT_SETTINGS = ("resume", "out", "overwrite")


def resume_config(requested: TrainConfig, given: set[str]) -> TrainConfig:
    """The saved config of ``requested.resume``, with the adjustable flags the user ``given``.

    A given flag that differs from the saved setting is a :class:`UserError`, and so is a saved
    setting that a flag could not give (checked as flags are, before anything is built). A
    part named again by a flag is the user's: its plugin may lie inside the run folder.
    """
    run = Run(requested.resume)
    saved = saved_settings(run.path)
    for name in sorted(given - set(ADJUSTABLE) - set(NOT_SETTINGS)):
        new, old = getattr(requested, name), getattr(saved, name)
        if name == "compile" and new == "auto":  # settled when the run was created
            continue
        if isinstance(new, str):  # a plugin file is recorded with its absolute path
            new = absolute_file_spec(new)
        if new != old:
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"{flag} {_show(new)} conflicts with the run's saved {_show(old)}; "
                f"drop {flag} to resume, or start a new run"
            )
    if "out" in given and Path(requested.out).resolve() != run.path.resolve():
        raise UserError("--out and --resume name different folders; --resume continues in place")
    saved.data_dir = recorded_data_dir(saved.data_dir)  # a run from another machine
    for name in ADJUSTABLE:
        if name in given:
            setattr(saved, name, getattr(requested, name))
    saved.resume = saved.out = str(run.path)
    saved.overwrite = False
    check_parts({name: getattr(requested, name) for name in given & set(PART_FIELDS)})
    try:
        return saved.validate()
    except UserError as exc:
        raise UserError(f"the saved settings of {run.path}: {exc}") from None


def saved_settings(run_dir: str | Path) -> TrainConfig:
    """The settings a run folder with a checkpoint recorded (config.json, else the
    checkpoint's), unchecked; a :class:`UserError` for a folder with nothing to resume."""
    run = Run(run_dir)
    if not run.checkpoint_path.exists() and not run.checkpoint_path.is_symlink():
        _refuse_without_checkpoint(run)  # anything else there is refused when it is read
    return _saved_config(run)


def _refuse_without_checkpoint(run: Run) -> None:
    """A folder with nothing to continue from: no run at all, or a run stopped (killed, a
    machine lost) before its first checkpoint, whose settings alone can start it again."""
    if not run.path.is_dir():
        raise UserError(f"--resume {run.path}: no such folder")
    if run.config_path.is_file():
        raise UserError(
            f"--resume {run.path}: no checkpoint to continue from (the run stopped before it "
            f"saved one, or checkpoint.pt was removed); start it again with: pyro-vae train "
            f"--config {run.config_path} --out {run.path} --overwrite"
        )
    if any(run.path.iterdir()):
        raise UserError(
            f"--resume {run.path}: no config.json or checkpoint.pt (a run stopped before it "
            f"saved its settings, or not a run folder); start a new run with --out {run.path} "
            "--overwrite"
        )
    raise UserError(f"--resume {run.path}: not a run folder (no config.json)")


def _saved_config(run: Run) -> TrainConfig:
    """The run's settings from config.json; if that is missing or damaged, from the checkpoint
    (which holds them too), saying so: config.json is rewritten when training starts."""
    try:
        settings = run.read_config()
    except (OSError, ValueError):
        pass
    else:
        return TrainConfig.from_dict(settings, str(run.config_path))
    try:
        settings = run.load_checkpoint()["config"]
    except (UserError, KeyError, TypeError):
        raise UserError(
            f"--resume {run.path}: config.json is damaged and the checkpoint cannot replace it"
        ) from None
    saved = TrainConfig.from_dict(settings, f"the settings in {run.checkpoint_path}")
    print(
        f"{run.config_path} is missing or damaged; the run's settings are taken from "
        f"{run.checkpoint_path.name}, and config.json is rebuilt",
        flush=True,
    )
    return saved


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def restore(state: dict, vae, trainer, data_rng: torch.Generator, epochs: int) -> int:
    """Load a checkpoint into freshly built objects; returns the epoch it was taken after."""
    epoch = int(state["epoch"])
    if epoch >= epochs:
        raise UserError(
            f"the run already completed {epoch} epochs; pass --epochs N with N > {epoch} "
            "to train further"
        )
    ranks = state.get("world_size", 1)
    if ranks != distributed.world_size():
        raise UserError(
            f"the run was trained with {ranks} process(es) and is resumed with "
            f"{distributed.world_size()}; resume it with {ranks} in total to continue it exactly"
        )
    try:
        vae.load_state_dict(state["vae"])
        trainer.load_state_dict(state["trainer"])
    except (RuntimeError, KeyError, ValueError):
        raise UserError("the checkpoint does not match the run's configuration") from None
    rng = state["rng_ranks"][distributed.rank()] if "rng_ranks" in state else state["rng"]
    set_rng_states(rng, data_rng)
    return epoch


def rng_states(data_rng: torch.Generator) -> dict:
    """This process's torch, data, numpy and Python RNG states as tensors and plain data (what a
    checkpoint read with ``weights_only=True`` can hold)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
    states = {
        "torch": torch.get_rng_state(),
        "data": data_rng.get_state(),
        "numpy": numpy_state,
        "python": random.getstate(),  # (int, tuple of ints, float or None): plain data
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # draws made on the GPU
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(rng: dict, data_rng: torch.Generator) -> None:
    """Restore :func:`rng_states` (or a version-1 checkpoint's, with numpy's state as saved).
    The GPU's state is restored where the run continues on a GPU (a run moved from the GPU to
    the CPU continues on the CPU's generator)."""
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    data_rng.set_state(rng["data"])
    numpy_state = rng["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        numpy_state = (
            numpy_state["name"],
            keys,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    random.setstate(rng["python"])
