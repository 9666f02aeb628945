"""Parts named on the command line: built in, added by an installed package, or imported by path.

Every pluggable part (``--prior``, ``--likelihood``, ``--encoder``, ``--decoder``, ``--model``,
and ``fit-prior --prior``) is one *spec* string. config.json records it, so every command
(``evaluate``, ``plot``, ``--resume``, ``compare``, torchrun) rebuilds the run from it:

=================================  ==========================================================
``mog:10``                         a name with one argument
``mog(num_components=10)``         a name with keyword arguments (Python literals)
``studentt:3``                     a name that an installed package adds through the entry-point
                                   group ``pyro_vae.priors`` (``pyro_vae.likelihoods``, ...)
``my_priors:StudentT``             ``module.path:Attribute``, imported (the working directory
                                   is searched after ``sys.path``)
``my_priors:StudentT(df=3)``       the same with keyword arguments
``path/to/priors.py:StudentT``     a Python file, recorded with its absolute path
=================================  ==========================================================

An imported attribute must be a class of the part's kind (an ``nn.Module`` subclass): a run
folder's config.json names it, and from there the library only ever constructs a module, never
calls an arbitrary function (``os:system(command=...)`` is refused). A built-in name or an
installed entry point may also be a function that returns the part. The library passes the
factory what the run knows, the *context* of the part's kind (``z_dim``, ``data_dim``, ...), by
parameter name and only to the parameters that ask for it; the argument after ``name:`` fills
the first parameter the context does not, and keyword arguments fill the rest. So
``MixtureOfGaussiansPrior(z_dim, num_components)`` is ``mog:10`` and a user's
``StudentT(z_dim, df=5.0)`` is ``my_priors:StudentT(df=3)``.

Names are looked up among the built-in ones first, then among installed entry points.

Importing a plugin runs its code. A spec read from a folder that is being opened (a run
folder's config.json and checkpoint, a fitted code prior, the folder of a ``--config`` file) is
rebuilt under :func:`from_run_folder`: it may import an installed module or a file outside the
folder, never code that lies inside it, however it is spelled (a file by absolute or relative
path, with ``..`` or through a symlink; a dotted module, found level by level where its file
really is, after namespace packages, before any level is imported), and a file only by its
absolute path. Two things lift the refusal: the user names the same plugin again (any spec
resolved outside :func:`from_run_folder`, e.g. a flag given on the command line, vouches for
the files it imports), or :func:`trusting` (the ``--trust-plugins`` flag). A plugin that is
imported from inside the folder, or from beside it (a file or package directly in the folder's
parent), is named in one warning line on stderr (docs/reliability.md, threat model).
"""

import ast
import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from pyro_vae.errors import UserError

__all__ = [
    "Spec",
    "parse_spec",
    "resolve",
    "check_spec",
    "builtin_arguments",
    "build",
    "entry_point_names",
    "absolute_file_spec",
    "from_run_folder",
    "trusting",
]


@dataclass(frozen=True)
class _Opened:
    """The folder whose files name the specs being resolved, as given and with links resolved."""

    folder: Path
    real: Path
    what: str  # "the run folder RUN", "the folder of --config FILE"

    def where(self, location: Path) -> str | None:
        """``"inside"`` the folder, ``"beside"`` it (directly in its parent), or None; a path
        counts as it is spelled and with its links resolved."""
        spellings = {Path(os.path.abspath(location)), location.resolve()}
        folders = {self.folder, self.real}
        if any(p.is_relative_to(f) for p in spellings for f in folders):
            return "inside"
        if any(p.parent == f.parent for p in spellings for f in folders):
            return "beside"
        return None


_OPENED: ContextVar[_Opened | None] = ContextVar("pyro_vae_opened_folder", default=None)
_TRUSTED: ContextVar[bool] = ContextVar("pyro_vae_trust_plugins", default=False)
#: Files and package folders imported for specs the user gave (resolved outside
#: :func:`from_run_folder`): the user vouched for them, so an opened folder may name them too.
_USER_CODE: set[Path] = set()
_WARNED: set[tuple[str, _Opened]] = set()


@contextlib.contextmanager
def from_run_folder(folder: str | Path | None, what: str | None = None) -> Iterator[None]:
    """Specs resolved inside this block come from ``folder``'s files: importing code that lies
    inside the folder (or a file by a relative path) is refused, unless the user named that
    code or :func:`trusting` is in force; code inside or beside the folder that does get
    imported is named in a warning. ``what`` names the folder in messages (default "the run
    folder FOLDER"). ``None``: specs given by the user, no restriction."""
    opened = None
    if folder is not None:
        absolute = Path(os.path.abspath(folder))
        opened = _Opened(absolute, absolute.resolve(), what or f"the run folder {folder}")
    token = _OPENED.set(opened)
    try:
        yield
    finally:
        _OPENED.reset(token)


@contextlib.contextmanager
def trusting(enabled: bool = True) -> Iterator[None]:
    """Inside this block (``enabled``), a folder being opened may name plugins that lie inside
    it, and they are imported, with a warning: the ``--trust-plugins`` flag, for a run folder
    whose code you have read. ``trusting(False)`` keeps whatever trust is already in force."""
    token = _TRUSTED.set(_TRUSTED.get() or enabled)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _check_code(locations: list[Path], flag: str, spec: "Spec") -> str | None:
    """Refuse code that the folder being opened provides (unless trusted or the user's own);
    returns where the code lies relative to it ("inside", "beside" or None). Outside any
    opened folder, remember the code as the user's own."""
    opened = _OPENED.get()
    if opened is None:
        _USER_CODE.update(location.resolve() for location in locations)
        return None
    found = None
    for location in locations:
        where = opened.where(location)
        allowed = _TRUSTED.get() or location.resolve() in _USER_CODE
        if where == "inside" and not allowed:
            raise UserError(
                f"{flag} {spec.text}: refusing to import {location}, which {opened.what} "
                "provides: a run folder is data, not code; name the plugin on the command line "
                "or pass --trust-plugins to run it (docs/reliability.md)"
            )
        found = "inside" if "inside" in (where, found) else where or found
    return found


def _warn(where: str | None, location: Path, flag: str, spec: "Spec") -> None:
    """One line on stderr, once per spec and folder, when imported code lies ``where`` (inside
    or beside) the folder being opened."""
    opened = _OPENED.get()
    if where is None or opened is None or (spec.text, opened) in _WARNED:
        return
    _WARNED.add((spec.text, opened))
    print(
        f"pyro-vae: warning: {flag} {spec.text} imports {location}, which lies {where} "
        f"{opened.what}",
        file=sys.stderr,
        flush=True,
    )


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ``target`` is a name or ``module:attr`` / ``file.py:attr``; ``arg`` the
    value after ``name:`` (None if absent); ``kwargs`` the keyword arguments."""

    text: str
    target: str
    arg: object = None
    kwargs: dict = field(default_factory=dict)

    @property
    def is_import(self) -> bool:
        return ":" in self.target


def parse_spec(text: str, flag: str) -> Spec:
    """Split a spec into target, argument and keyword arguments (see the module docstring)."""
    head, kwargs = text.strip(), {}
    if head.endswith(")") and "(" in head:
        head, _, inner = head.partition("(")
        kwargs = _keyword_literals(inner[:-1], text, flag)
    module, colon, tail = head.rpartition(":")
    if not head or (colon and not module):
        raise UserError(f"{flag} {text!r}: expected NAME, NAME:VALUE or module:Attribute")
    if colon and all(part.isidentifier() for part in tail.split(".")):
        return Spec(text, head, None, kwargs)  # module:Attribute or file.py:Attribute
    if not colon:
        return Spec(text, head, None, kwargs)
    try:
        arg = ast.literal_eval(tail)
    except (ValueError, SyntaxError):
        raise UserError(f"{flag} {text!r}: {tail!r} after ':' is not a number or literal") from None
    return Spec(text, module, arg, kwargs)


def _keyword_literals(inner: str, text: str, flag: str) -> dict:
    """``"df=3, scale=0.5"`` -> ``{"df": 3, "scale": 0.5}``; values must be Python literals."""
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
        if call.args or any(kw.arg is None for kw in call.keywords):
            raise UserError(f"{flag} {text!r}: give arguments by keyword, e.g. Name(df=3)")
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (ValueError, SyntaxError):
        raise UserError(
            f"{flag} {text!r}: arguments must be keyword=literal pairs (numbers, strings, "
            "tuples, lists, True/False/None)"
        ) from None


def entry_point_names(kind: str) -> dict[str, importlib.metadata.EntryPoint]:
    """Entry points of installed packages in the group ``pyro_vae.{kind}s``."""
    group = f"pyro_vae.{kind}s"
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def resolve(spec: Spec, kind: str, flag: str, builtins: Mapping[str, Callable]) -> Callable:
    """The class or function a spec names: built in, installed entry point, or imported."""
    if not spec.is_import:
        if spec.target in builtins:
            return builtins[spec.target]
        installed = entry_point_names(kind)
        if spec.target in installed:
            return _load_entry_point(installed[spec.target], flag, spec)
        names = ", ".join([*builtins, *installed]) or "none"
        raise UserError(
            f"unknown {flag.lstrip('-')} {spec.target!r} (known: {names}); "
            "or give module:Attribute or path/to/file.py:Attribute"
        )
    where, _, attribute = spec.target.rpartition(":")
    if where in builtins or where in entry_point_names(kind):  # mog:zero, not module:Attribute
        raise UserError(
            f"{flag} {spec.text}: {attribute!r} after ':' is not a number or literal; "
            f"give {where}:VALUE or {where}(name=value, ...)"
        )
    module = _import_file(where, flag, spec) if _is_file(where) else _import(where, flag, spec)
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{flag} {spec.text}: {where} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{flag} {spec.text}: {attribute} is not a class or function")
    return obj


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _import(name: str, flag: str, spec: Spec):
    """Import a module, searching the working directory after ``sys.path``; a missing module
    (or one the plugin itself imports) is one line that names it. Each level of a dotted name
    is located (without running it) and checked before it is imported (:func:`_check_code`)."""
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        raise UserError(f"{flag} {spec.text}: {name!r} is neither a module name nor a .py file")
    cwd = os.getcwd()
    if parts[0] not in sys.modules and cwd not in sys.path and _find(parts[0]) is None:
        sys.path.append(cwd)  # `pyro-vae` (a console script) does not search the working dir
    where, places = None, []
    try:
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            found = _find(prefix)  # the parent levels are imported (and were checked) by now
            if found is None:
                raise ModuleNotFoundError(name=prefix)
            places = [found.origin] if found.has_location and found.origin else []
            places += list(found.submodule_search_locations or [])
            where = _check_code([Path(p) for p in places], flag, spec) or where
            module = importlib.import_module(prefix)
        _warn(where, Path(places[0]) if places else Path(name), flag, spec)
        return module
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        raise UserError(
            f"{flag} {spec.text} needs the module {missing!r}, which cannot be imported: "
            "install it, or run from the folder that holds it"
        ) from None
    except UserError:
        raise
    except Exception as exc:  # the plugin's own code failed while importing
        raise UserError(f"{flag} {spec.text}: importing {name} failed: {_one_line(exc)}") from None


def _find(name: str):
    """The spec of module ``name`` (its parent package already imported), found without
    running it; None if there is none."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__spec__", None) is not None:
        return module.__spec__
    try:
        return importlib.util.find_spec(name)
    except ValueError:  # a module in sys.modules without a spec (e.g. __main__)
        return None


def _import_file(path: str, flag: str, spec: Spec):
    """Load a Python file as a module of its own (once per absolute path)."""
    opened = _OPENED.get()
    if opened is not None and not _TRUSTED.get() and not Path(path).is_absolute():
        raise UserError(
            f"{flag} {spec.text}: {opened.what} names a plugin file by a relative path; it must "
            "be absolute (pyro-vae records it so), or the folder's own code could be run"
        )
    where = _check_code([Path(os.path.abspath(path))], flag, spec)
    _warn(where, Path(os.path.abspath(path)), flag, spec)
    file = Path(path).resolve()
    if not file.is_file():
        raise UserError(f"{flag} {spec.text} needs the file {file}, which does not exist")
    name = f"pyro_vae_plugin_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        if isinstance(exc, ModuleNotFoundError):
            raise UserError(
                f"{flag} {spec.text}: {file.name} imports the module {exc.name!r}, "
                "which cannot be imported"
            ) from None
        raise UserError(f"{flag} {spec.text}: loading {file} failed: {_one_line(exc)}") from None
    return module


def _load_entry_point(entry_point, flag: str, spec: Spec) -> Callable:
    """An installed name's object; its module is checked like any import (an opened folder on
    ``sys.path`` could carry a package's metadata that points into itself)."""
    try:
        _import(entry_point.module, flag, spec)
        return entry_point.load()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"{flag} {spec.text}: the installed plugin {entry_point.value} failed to load: "
            f"{_one_line(exc)}"
        ) from None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def _arguments(
    factory: Callable, spec: Spec, flag: str, context: Mapping[str, object]
) -> dict[str, object]:
    """The keyword arguments a factory is called with: the context entries it names, the spec's
    argument for its first other parameter, and the spec's keyword arguments."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {name: context[name] for name in params if name in context}
    for name in spec.kwargs:
        if name in context:
            raise UserError(f"{flag} {spec.text}: {name} comes from the run's settings, not here")
    if spec.arg is not None:
        free = [
            p.name
            for p in params.values()
            if p.name not in context
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in spec.kwargs
        ]
        if not free:
            raise UserError(f"{flag} {spec.text}: {spec.target} takes no argument after ':'")
        kwargs[free[0]] = spec.arg
    kwargs |= spec.kwargs
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise UserError(f"{flag} {spec.text}: {exc}") from None
    except ValueError:  # no signature to check against (a builtin): let the call decide
        pass
    return kwargs


def check_spec(
    text: str,
    kind: str,
    flag: str,
    builtins: Mapping[str, Callable],
    context_names: Collection[str],
    expect: type = object,
) -> Callable:
    """Parse and resolve a spec and check its arguments against the factory's signature
    (before training: nothing is built). Returns the factory."""
    spec = parse_spec(text, flag)
    factory = _factory(spec, kind, flag, builtins, expect)
    _arguments(factory, spec, flag, dict.fromkeys(context_names))
    return factory


def builtin_arguments(
    text: str, builtins: Mapping[str, Callable], flag: str, context_names: Collection[str]
) -> tuple[str, dict[str, object]] | None:
    """For a spec that names a built-in factory: its name and the arguments the spec gives it
    (the context left out), found without building or importing anything; None for any other
    spec, or one that its own check will refuse."""
    try:
        spec = parse_spec(text, flag)
        if spec.is_import or spec.target not in builtins:
            return None
        kwargs = _arguments(builtins[spec.target], spec, flag, dict.fromkeys(context_names))
    except UserError:
        return None
    return spec.target, {k: v for k, v in kwargs.items() if k not in context_names}


def _factory(spec: Spec, kind: str, flag: str, builtins: Mapping[str, Callable], expect: type):
    """The resolved factory; an imported one must be a subclass of ``expect``."""
    factory = resolve(spec, kind, flag, builtins)
    if spec.is_import and not (isinstance(factory, type) and issubclass(factory, expect)):
        name = "torch.nn.Module" if expect.__module__.startswith("torch.nn") else expect.__name__
        raise UserError(
            f"{flag} {spec.text}: {spec.target.rpartition(':')[2]} is not a subclass of {name}"
        )
    return factory


def build(
    text: str,
    kind: str,
    flag: str,
    builtins: Mapping[str, Callable],
    context: Mapping[str, object],
    expect: type = object,
):
    """Build the part a spec names, passing the context by parameter name; the part must be
    an instance of ``expect``."""
    spec = parse_spec(text, flag)
    factory = _factory(spec, kind, flag, builtins, expect)
    part = factory(**_arguments(factory, spec, flag, context))
    if not isinstance(part, expect):
        raise UserError(f"{flag} {text} built a {type(part).__name__}, not a {expect.__name__}")
    return part


def absolute_file_spec(text: str) -> str:
    """A file-form spec with its path made absolute (what config.json records), so that the run
    reloads from any working directory; other specs unchanged."""
    head, paren, rest = text.partition("(")
    where, colon, attribute = head.rpartition(":")
    if colon and where and _is_file(where) and all(p.isidentifier() for p in attribute.split(".")):
        return f"{Path(where).resolve()}:{attribute}{paren}{rest}"
    return text
