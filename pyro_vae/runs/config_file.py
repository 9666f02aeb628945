"""Settings from a file (``--config FILE``): a TOML recipe, or a run's own ``config.json``.

A recipe is a flat TOML table whose keys are :class:`~pyro_vae.runs.config.TrainConfig` fields,
spelled as the flags without their dashes or with underscores (``z-dim = 50`` or
``z_dim = 50``); ``recipes/`` holds the settings of the published experiments this project
reproduces, each naming its source in a comment. A run's ``config.json`` repeats that run: its
record of where it lived (``out``, ``resume``, ``overwrite``) and of the library versions is left
out. Settings merge in one order: the defaults, then the file, then the flags given on the
command line.

Every value is checked against the field's type here (:func:`checked_setting`, which also checks
the settings of a run's config.json and checkpoint when a run is resumed or loaded), so a mistake
in a file is one line that names the file and the setting, before anything runs. A file cannot
hold ``trust_plugins``: trusting a folder's code is said on the command line only.
"""

import json
import numbers
import os
import sys
import types
import typing
from pathlib import Path

from pyro_vae.errors import UserError
from pyro_vae.runs.files import read_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["read_config_file", "checked_setting", "RUN_RECORD", "COMMAND_LINE_ONLY"]

#: What a run's config.json records beside its settings: not carried over by ``--config``.
RUN_RECORD = ("out", "resume", "overwrite", "versions")
#: Settings that only the command line (or Python) gives: never read from a file, never recorded.
COMMAND_LINE_ONLY = ("trust_plugins",)


def read_config_file(path: str | Path) -> dict:
    """The settings in ``path`` (TOML, or JSON for a ``.json`` file), checked and converted to
    the types of :class:`~pyro_vae.runs.config.TrainConfig`'s fields."""
    from pyro_vae.runs.config import RECORD_DEFAULTS, TrainConfig, unread_settings

    path = Path(path)
    is_json = path.suffix == ".json"
    try:  # a regular file of a settings file's size (a FIFO or a huge file: one line)
        text = read_file(path, "config.json" if is_json else "recipe").decode("utf-8")
    except OSError as exc:
        raise UserError(f"--config {path}: {exc.strerror.lower()}") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"--config {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    try:
        raw = json.loads(text) if is_json else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"--config {path} does not parse: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--config {path} must hold a table of settings")
    hints = typing.get_type_hints(TrainConfig)
    settings = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if is_json and name in RUN_RECORD:
            continue
        if isinstance(value, dict):
            raise UserError(f"--config {path}: [{key}] is a table; write settings at the top level")
        if name in COMMAND_LINE_ONLY:
            raise UserError(
                f"--config {path}: {key!r} is given on the command line only; a file cannot "
                "vouch for its own plugins"
            )
        if name in RUN_RECORD[:3]:
            raise UserError(
                f"--config {path}: {key!r} says where a run lives, not what it trains; give "
                f"--{name.replace('_', '-')} on the command line"
            )
        if name not in hints:
            raise UserError(f"--config {path}: unknown setting {key!r} (a train flag's name)")
        settings[name] = checked_setting(f"--config {path}", key, value, hints[name])
    if is_json:  # a run's record from before it left out what its model does not read
        for name in unread_settings(settings.get("model", TrainConfig.model)):
            settings.pop(name, None)
        settings = {**RECORD_DEFAULTS, **settings}  # ... or from before a default changed
    return settings


def checked_setting(source: str, key: str, value, hint) -> object:
    """``value`` as the type ``hint`` of a TrainConfig field, or a :class:`UserError` that names
    the setting and where it was read (``source``: "--config FILE", "RUN/config.json", ...; an
    empty source names the flag)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in options:
        if kind is type(None) and value is None:
            return None
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and _integer(value):
            return int(value)
        if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str | os.PathLike):  # a Path given in Python
            return os.fspath(value)
        if typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
            if all(_integer(v) for v in value):
                return tuple(int(v) for v in value)
    wanted = " or ".join(_TYPE_NAMES.get(kind, "a list of integers") for kind in options)
    where = f"{source}: {key}" if source else "--" + key.replace("_", "-")
    raise UserError(f"{where} must be {wanted}, got {_shown(value)}")


def _integer(value) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _shown(value) -> str:
    """A value for a message: its repr, cut short (a file may hold anything)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    type(None): "null",
}
