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

Importing a plugin runs its code. A spec read from a run folder (config.json, a fitted code
prior) is rebuilt under :func:`from_run_folder`: it may import an installed module or a file
outside the folder, never a module or file that the run folder itself provides, and a file
only by its absolute path (docs/reliability.md, loading runs from elsewhere).
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
    "build",
    "entry_point_names",
    "absolute_file_spec",
    "from_run_folder",
]

_RUN_FOLDER: ContextVar[Path | None] = ContextVar("pyro_vae_run_folder", default=None)


@contextlib.contextmanager
def from_run_folder(folder: str | Path | None) -> Iterator[None]:
    """Specs resolved inside this block come from ``folder``'s files: importing code that the
    folder provides (a module or a file inside it, or a file by a relative path) is refused.
    ``None``: specs given by the user, no restriction."""
    token = _RUN_FOLDER.set(None if folder is None else Path(folder).resolve())
    try:
        yield
    finally:
        _RUN_FOLDER.reset(token)


def _refuse_run_folder_code(locations: list[Path], flag: str, spec: "Spec") -> None:
    folder = _RUN_FOLDER.get()
    for location in locations if folder is not None else ():
        if location.resolve().is_relative_to(folder):
            raise UserError(
                f"{flag} {spec.text}: refusing to import {location}, which the run folder "
                f"{folder} provides; a run folder is data, not code (docs/reliability.md)"
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
    (or one the plugin itself imports) is one line that names it."""
    cwd, top = os.getcwd(), name.partition(".")[0]
    if importlib.util.find_spec(top) is None and cwd not in sys.path:
        sys.path.append(cwd)  # `pyro-vae` (a console script) does not search the working dir
    found = importlib.util.find_spec(top)  # locates the top-level module without running it
    if found is not None:
        places = [found.origin] if found.has_location and found.origin else []
        places += list(found.submodule_search_locations or [])
        _refuse_run_folder_code([Path(p) for p in places], flag, spec)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        raise UserError(
            f"{flag} {spec.text} needs the module {missing!r}, which cannot be imported: "
            "install it, or run from the folder that holds it"
        ) from None
    except Exception as exc:  # the plugin's own code failed while importing
        raise UserError(f"{flag} {spec.text}: importing {name} failed: {_one_line(exc)}") from None


def _import_file(path: str, flag: str, spec: Spec):
    """Load a Python file as a module of its own (once per absolute path)."""
    if _RUN_FOLDER.get() is not None and not Path(path).is_absolute():
        raise UserError(
            f"{flag} {spec.text}: a run folder names a plugin file by a relative path; it must "
            "be absolute (pyro-vae records it so), or the folder's own code could be run"
        )
    file = Path(path).resolve()
    _refuse_run_folder_code([file], flag, spec)
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
    try:
        return entry_point.load()
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
