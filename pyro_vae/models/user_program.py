"""A model and guide the user wrote, as they are: any pair of Pyro programs as a LatentModel.

:class:`PyroProgramModel` wraps

- an ``nn.Module`` with ``model(x)`` and ``guide(x)`` methods (Pyro's ``examples/vae/vae.py``
  unchanged, a ``PyroModule``), or
- a pair of plain functions ``model(x)`` and ``guide(x)``,

so that every trainer (SVI, variational EM with each E-step rule), evaluation and figure of the
library runs it. ``--model path/to/file.py:VAE`` (or ``module:Class``, ``'file.py:VAE(z_dim=10)'``)
names such a class on the command line (:func:`pyro_vae.models.model_class`).

**The plate convention.** Every sample site of both programs lies inside one plate over the
minibatch, of size ``len(x)`` at dim -1 (``with pyro.plate("data", x.shape[0]):``), and inside
no other plate; dimensions within one data point are event dimensions (``.to_event(n)``). The
per-data-point ELBO, the importance-weighted bound L_K and the E-steps sum each site over that
plate. The guide samples every latent site of the model; the model observes the data
(``obs=x``). Each is checked once, on the first batch, with a one-line error.

**The split into phi and theta** comes from the programs themselves, on one batch of training
data (:meth:`PyroProgramModel.prepare`): the guide is traced, then the model is replayed on the
guide's samples (detached). A parameter belongs to a program when that program's trace records
it (a ``pyro.param`` site, or the parameter sites ``pyro.module`` records, named after the
module) or when the
program's log-density or sampled values depend on it (autograd), which also covers an
``nn.Module`` attribute used without ``pyro.module``. The guide's parameters are phi (SVI and the
E-steps train them), the model's are theta (SVI and the M-steps). A parameter **both** programs
use is put on the model side: SVI trains it with the rest, and variational EM refuses the model
in one line, since an M-step that moves the guide (or an E-step that moves the model) is no
longer coordinate ascent. A parameter neither program uses is not trained (listed in
``unused_parameters``).

**Parameters in Pyro's parameter store** (``pyro.param``) live in a store of the model's own
(``ParamStoreDict.scope``): two models in one process never share a name, and the learned values
are this module's parameters (``params``), so checkpoints, ``--resume`` and ``.to(device)`` carry
them.

``kl_weight`` (``--beta``, ``--kl-warmup``) scales the latent sites of both programs
(:class:`ScaleLatents`), so the loss is -E_q[log p(x|z)] + beta KL, as for the library's VAE.
"""

import functools
import math
import re
from collections.abc import Callable, Iterator

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.models.base import LATENT_FIGURES, LatentModel, check_flat_data
from pyro_vae.plugins import build

__all__ = ["PyroProgramModel", "ScaleLatents", "as_latent_model", "program_class", "MODEL_FIELDS"]

#: Settings of the library's own models (networks, prior, likelihood, corruption): a model of
#: your own reads none of them, so a flag given for one is refused.
MODEL_FIELDS = (
    "z_dim",
    "hidden_dims",
    "likelihood",
    "prior",
    "arch",
    "activation",
    "encoder",
    "decoder",
    "gaussian_scale",
    "corrupt",
)

PLATE_RULE = (
    "every sample site must lie inside one pyro.plate over the minibatch, "
    "`with pyro.plate('data', x.shape[0]):`, and inside no other plate (dimensions within a "
    "data point are event dimensions: .to_event(n))"
)


class ScaleLatents(Messenger):
    """Multiply the log-density of every latent (unobserved) sample site by ``scale``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


def _has_programs(obj: object) -> bool:
    return callable(getattr(obj, "model", None)) and callable(getattr(obj, "guide", None))


def _short(spec: str) -> str:
    """A ``--model`` spec without the folders of its file: ``vae.py:VAE(z_dim=4)``."""
    head, paren, rest = spec.partition("(")
    return head.rsplit("/", 1)[-1] + paren + rest


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _sample_sites(trace: poutine.Trace) -> Iterator[tuple[str, dict]]:
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            yield name, site


def _detached(trace: poutine.Trace) -> poutine.Trace:
    """A copy of ``trace`` whose sampled values are cut from the guide's parameters."""
    frozen = poutine.Trace()
    for name, site in trace.nodes.items():
        value = site.get("value")
        detached = value.detach() if isinstance(value, torch.Tensor) else value
        frozen.add_node(name, **{**site, "value": detached})
    return frozen


class PyroProgramModel(LatentModel):
    """A model and guide of the user's own as a :class:`LatentModel` (module docstring).

    Args:
        program: an ``nn.Module`` with ``model(x)`` and ``guide(x)`` methods, or the model
            function (then ``guide`` is the guide function).
        guide: the guide function, when ``program`` is a function.
        example: a batch of data (N, D) to :meth:`prepare` the model with now (else the run
            system prepares it with its first training batch).
        point_shape: the shape of one data point as the programs take it (default ``(D,)``):
            the programs get ``x.reshape(len(x), *point_shape)``.
        image_shape: (H, W) when the data are images (figures that draw them apply).
    """

    spec: str | None = None  # the --model spec of a class built from the command line

    def __init__(
        self,
        program: nn.Module | Callable,
        guide: Callable | None = None,
        example: torch.Tensor | None = None,
        point_shape: tuple[int, ...] | None = None,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if guide is None:
            if not (isinstance(program, nn.Module) and _has_programs(program)):
                raise UserError(
                    f"{type(program).__name__} is not an nn.Module with model(x) and guide(x) "
                    "methods; pass a model function and a guide function"
                )
            self.program = program
            self._model, self._guide = program.model, program.guide
        else:
            if not (callable(program) and callable(guide)):
                raise UserError("model and guide must be callables: model(x), guide(x)")
            self.program = None
            self._model, self._guide = program, guide
        self.name = type(program).__name__ if guide is None else getattr(program, "__name__", "")
        self.params = nn.ParameterDict()  # pyro.param leaves, named after their store names
        self._store: dict = {"params": {}, "constraints": {}}
        self._phi: list[nn.Parameter] | None = None
        self._theta: list[nn.Parameter] = []
        self.shared_parameters: list[str] = []
        self.unused_parameters: list[str] = []
        self.latent_shapes: dict[str, tuple[int, ...]] = {}
        self.observed: list[str] = []
        self.point_shape = point_shape
        self.image_shape = image_shape
        self.figures, self.metrics, self.not_applicable = (), (), {}
        if example is not None:
            self.prepare(example, point_shape, image_shape)

    needs_example = True
    unread_fields = MODEL_FIELDS

    # --- the run system ------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """A model of your own reads none of the library's model settings; Monte Carlo EM
        samples the latent site of the library's VAE and does not run a program of your own."""
        default = type(config)()
        for field in MODEL_FIELDS:
            if getattr(config, field) != getattr(default, field):
                flag = "--" + field.replace("_", "-")
                raise UserError(
                    f"{flag} does not apply to --model {_short(config.model)}: a model of your "
                    "own reads none of the library's model settings; give its own as "
                    "constructor arguments, --model 'file.py:Class(name=value)'"
                )
        if config.algo == "mcem":
            raise UserError(
                f"--algo mcem does not apply to --model {_short(config.model)}: Monte Carlo EM "
                "runs HMC on the library's VAE; train a model of your own with --algo svi or em"
            )

    @classmethod
    def from_config(
        cls, config, data_dim: int, image_shape: tuple[int, int] | None, prior=None
    ) -> "PyroProgramModel":
        """The class ``cls.spec`` names, built with its spec's arguments (and ``data_dim`` if
        its constructor asks for it), wrapped; :meth:`prepare` follows with data."""
        if prior is not None:
            raise UserError("a prior module given in Python does not apply to a model of your own")
        program = build(cls.spec, "model", "--model", {}, {"data_dim": data_dim}, nn.Module)
        return cls(program, image_shape=image_shape)

    def check_algo(self, algo: str) -> None:
        """Variational EM needs disjoint phi and theta; Monte Carlo EM does not apply."""
        if algo == "em" and self.shared_parameters:
            names = ", ".join(self.shared_parameters[:3])
            raise UserError(
                f"--algo em: the parameters {names} are used by both the model and the guide of "
                f"{self.name}; EM's E-steps train the guide's and its M-steps the model's, so each "
                "must belong to one program (use --algo svi, or give each its own)"
            )
        if algo == "mcem":
            raise UserError(
                f"--algo mcem does not apply to {self.name}: Monte Carlo EM runs HMC on the "
                "library's VAE; use --algo svi or em"
            )

    # --- the two programs ----------------------------------------------------------------------
    def _shaped(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.point_shape is None else x.reshape(x.shape[0], *self.point_shape)

    def _run(self, program: Callable, x: torch.Tensor, kl_weight: float) -> None:
        with pyro.get_param_store().scope(self._store):
            if kl_weight == 1.0:
                program(self._shaped(x))
            else:
                with ScaleLatents(kl_weight):
                    program(self._shaped(x))

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """The user's model on ``x`` (its latent sites' densities scaled by ``kl_weight``)."""
        self._run(self._model, x, kl_weight)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """The user's guide on ``x`` (its latent sites' densities scaled by ``kl_weight``)."""
        self._run(self._guide, x, kl_weight)

    def _traces(self, x: torch.Tensor, detach: bool = False) -> tuple[poutine.Trace, poutine.Trace]:
        guide_trace = poutine.trace(self.guide).get_trace(x)
        replayed = _detached(guide_trace) if detach else guide_trace
        model_trace = poutine.trace(poutine.replay(self.model, trace=replayed)).get_trace(x)
        return guide_trace, model_trace

    # --- the split -----------------------------------------------------------------------------
    def prepare(
        self,
        x: torch.Tensor,
        point_shape: tuple[int, ...] | None = None,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        """Trace both programs once on the batch ``x`` (N, D): check the plate convention, find
        the latent and observed sites, split the parameters into phi and theta, and decide the
        figures and metrics that apply. A mistake is one :class:`UserError` line."""
        self.point_shape = tuple(point_shape) if point_shape is not None else None
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        if self.point_shape is not None and math.prod(self.point_shape) != x[0].numel():
            raise UserError(f"point_shape {self.point_shape} does not fit data of shape {x.shape}")
        self.data_dim = x[0].numel()
        self._try_traces(x)  # fills the store: pyro.param leaves become this module's
        self._adopt_store()
        guide_trace, model_trace = self._try_traces(x)
        self._check_sites(guide_trace, model_trace, x.shape[0])
        self._split(guide_trace, model_trace)
        self._choose_outputs(model_trace, guide_trace)

    def _try_traces(self, x: torch.Tensor) -> tuple[poutine.Trace, poutine.Trace]:
        try:
            with torch.enable_grad():
                return self._traces(x, detach=True)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"running {self.name}'s model and guide on a batch of shape {tuple(x.shape)} "
                f"failed: {_one_line(exc)}"
            ) from None

    def _adopt_store(self) -> None:
        """Every leaf of the model's own parameter store that no submodule owns (pyro.param
        sites; modules that functions register) becomes a parameter of ``self.params``."""
        owned = {id(p) for p in self.program.parameters()} if self.program is not None else set()
        store = self._store["params"]
        for name, leaf in list(store.items()):
            if id(leaf) in owned or any(leaf is p for p in self.params.values()):
                continue
            if not isinstance(leaf, nn.Parameter):
                leaf = store[name] = nn.Parameter(leaf.detach(), requires_grad=True)
            key = re.sub(r"\W", "_", name)
            while key in self.params:
                key += "_"
            self.params[key] = leaf

    def _check_sites(self, guide_trace, model_trace, batch: int) -> None:
        for which, trace in (("guide", guide_trace), ("model", model_trace)):
            for name, site in _sample_sites(trace):
                frames = site["cond_indep_stack"]
                if (
                    len(frames) != 1
                    or frames[0].dim != -1
                    or frames[0].size != batch
                    or tuple(site["fn"].batch_shape) != (batch,)
                ):
                    raise UserError(f"site {name!r} of {self.name}'s {which}: {PLATE_RULE}")
        latent = [n for n, s in _sample_sites(guide_trace) if not s["is_observed"]]
        model_latent = [n for n, s in _sample_sites(model_trace) if not s["is_observed"]]
        self.observed = [n for n, s in _sample_sites(model_trace) if s["is_observed"]]
        if not latent:
            raise UserError(f"{self.name}'s guide samples no latent site")
        if sorted(latent) != sorted(model_latent):
            raise UserError(
                f"{self.name}'s guide must sample exactly the model's latent sites: the model "
                f"has {sorted(model_latent)}, the guide {sorted(latent)}"
            )
        if not self.observed:
            raise UserError(f"{self.name}'s model observes nothing: score the data with obs=x")
        self.latent_shapes = {n: tuple(guide_trace.nodes[n]["value"].shape[1:]) for n in latent}

    def _split(self, guide_trace, model_trace) -> None:
        """phi and theta by the rule of the module docstring."""
        own = list(self.program.parameters()) if self.program is not None else []
        store = self._store["params"]
        candidates = [p for p in dict.fromkeys([*own, *self.params.values()]) if p.requires_grad]
        names = {id(p): n for n, p in self.named_parameters()}

        def used(trace, output: torch.Tensor) -> set[int]:
            recorded = {id(store[n]) for n, s in trace.nodes.items() if s["type"] == "param"}
            grads = torch.autograd.grad(output, candidates, allow_unused=True, retain_graph=True)
            reached = {id(p) for p, g in zip(candidates, grads, strict=True) if g is not None}
            return recorded | reached

        with torch.enable_grad():
            guide_out = sum(
                s["fn"].log_prob(s["value"]).sum()
                + (s["value"].sum() if s["value"].requires_grad else 0.0)
                for _, s in _sample_sites(guide_trace)
            )
            model_out = sum(
                s["fn"].log_prob(s["value"]).sum() for _, s in _sample_sites(model_trace)
            )
            in_guide = used(guide_trace, guide_out) if candidates else set()
            in_model = used(model_trace, model_out) if candidates else set()
        self._phi = [p for p in candidates if id(p) in in_guide and id(p) not in in_model]
        self._theta = [p for p in candidates if id(p) in in_model]
        self.shared_parameters = [names[id(p)] for p in candidates if id(p) in in_guide & in_model]
        self.unused_parameters = [
            names[id(p)] for p in candidates if id(p) not in in_guide | in_model
        ]

    def _choose_outputs(self, model_trace, guide_trace) -> None:
        """The metrics and figures that apply to these programs and data."""
        normal = all(_diagonal_normal(s["fn"]) is not None for _, s in _sample_sites(guide_trace))
        site = model_trace.nodes[self.observed[0]] if len(self.observed) == 1 else None
        has_mean = site is not None and _has_mean(site["fn"])
        flat = has_mean and tuple(site["fn"].event_shape) == (self.data_dim,)
        self.metrics = ("elbo", "log_likelihood", "active_units")
        self.not_applicable = {}
        if normal:
            self.metrics += ("mutual_info",)
        else:
            self.not_applicable["mutual_info"] = "the guide is not a diagonal Gaussian"
        if flat:
            self.metrics = ("elbo", "reconstruction", *self.metrics[1:])
        else:
            self.not_applicable["reconstruction"] = (
                "the model does not observe one site of shape (D,) with a mean"
            )
        self.figures = ("latent",)
        if has_mean and self.image_shape is not None:
            self.figures = LATENT_FIGURES

    # --- parameter groups ------------------------------------------------------------------------
    def _prepared(self) -> list[nn.Parameter]:
        if self._phi is None:
            raise UserError(
                f"{self.name} is not prepared: call prepare(x) with a batch of data first "
                "(pyro_vae.fit_program and the run system do)"
            )
        return self._phi

    def guide_parameters(self) -> Iterator[nn.Parameter]:
        """phi: the parameters only the guide uses."""
        return iter(self._prepared())

    def model_parameters(self) -> Iterator[nn.Parameter]:
        """theta: the parameters the model uses (also those the guide shares)."""
        self._prepared()
        return iter(self._theta)

    # --- data and pictures --------------------------------------------------------------------
    def check_data(self, x: torch.Tensor, batch_size: int = 1000) -> None:
        """Type, shape (N, D), finiteness, and the support of the model's observed sites."""
        check_flat_data(x, self.data_dim, nn.Identity())
        with torch.no_grad(), pyro.validation_enabled(False):
            for start in range(0, x.shape[0], batch_size):
                _, trace = self._traces(x[start : start + batch_size])
                for name in self.observed:
                    fn, value = trace.nodes[name]["fn"], trace.nodes[name]["value"]
                    ok = fn.support.check(value)
                    if not bool(ok.all()):
                        raise UserError(
                            f"the data lie outside the support of {self.name}'s observed site "
                            f"{name!r} ({type(fn).__name__}, support {fn.support}); "
                            f"e.g. data point {start + int((~ok).nonzero()[0, 0])}"
                        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of a diagonal Gaussian guide, its latent sites flattened and joined."""
        trace = poutine.trace(self.guide).get_trace(x)
        parts = [_diagonal_normal(trace.nodes[n]["fn"]) for n in self.latent_shapes]
        if any(p is None for p in parts):
            raise UserError(f"{self.name}'s guide is not a diagonal Gaussian")
        locs, scales = zip(*parts, strict=True)
        return self._join(locs, x.shape[0]), self._join(scales, x.shape[0])

    def _join(self, tensors, batch: int) -> torch.Tensor:
        shapes = self.latent_shapes.values()
        parts = [
            t.expand(batch, *s).reshape(batch, -1) for t, s in zip(tensors, shapes, strict=True)
        ]
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's means (its samples where a site has no mean), shape (N, z_dim)."""
        trace = poutine.trace(self.guide).get_trace(x)
        values = []
        for name in self.latent_shapes:
            site = trace.nodes[name]
            values.append(site["fn"].mean if _has_mean(site["fn"]) else site["value"])
        return self._join(values, x.shape[0])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.distributions.Distribution:
        """The distribution of the model's (one) observed site given latent values ``z`` (N,
        z_dim)."""
        split, offset = {}, 0
        for name, shape in self.latent_shapes.items():
            size = math.prod(shape)
            split[name] = z[:, offset : offset + size].reshape(z.shape[0], *shape)
            offset += size
        dummy = z.new_zeros(z.shape[0], self.data_dim)
        with pyro.validation_enabled(False):
            trace = poutine.trace(poutine.condition(self.model, data=split)).get_trace(dummy)
        return trace.nodes[self.observed[0]]["fn"]

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of the observed site given ``z`` (..., z_dim), shape (..., D)."""
        flat = z.reshape(-1, z.shape[-1])
        return self.decode(flat).mean.reshape(*z.shape[:-1], self.data_dim)

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means of the observed site for latents drawn from the model, shape (n, D)."""
        dummy = torch.zeros(num_samples, self.data_dim, device=self._device())
        with pyro.validation_enabled(False):
            trace = poutine.trace(self.model).get_trace(dummy)
        return trace.nodes[self.observed[0]]["fn"].mean.reshape(num_samples, self.data_dim)

    def _device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))


def _diagonal_normal(fn) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loc, scale) of a Normal, possibly wrapped in Independent; else None."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc, fn.scale
    return None


def _has_mean(fn) -> bool:
    try:
        fn.mean  # noqa: B018
    except NotImplementedError:
        return False
    return True


@functools.cache
def program_class(spec: str) -> type[PyroProgramModel]:
    """The :class:`PyroProgramModel` subclass that builds the class ``spec`` names (one per
    spec, so every lookup gives the same class)."""
    return type("PyroProgramModel", (PyroProgramModel,), {"spec": spec})


def as_latent_model(
    model: nn.Module | Callable, guide: Callable | None = None, **kwargs
) -> LatentModel:
    """``model`` itself when it is a :class:`LatentModel`, else a :class:`PyroProgramModel`."""
    if isinstance(model, LatentModel) and guide is None:
        return model
    return PyroProgramModel(model, guide, **kwargs)
