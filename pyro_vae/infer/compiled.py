"""The compiled training step: the objective's loss and gradients traced once, compiled, replayed.

An eager step runs the guide and the model as Pyro programs (a message through the effect
handlers for every site and parameter), scores every site and builds an autograd graph: about
1.3 ms of Python per step whatever the network's size (docs/benchmarks.md). The compiled step
pays that once per (minibatch shape, settings):

    trace:   f(params, buffers, x, kl_weight) -> (loss, |g|, g),  g = grad of loss / B
             recorded by ``torch.fx.experimental.proxy_tensor.make_fx`` at the level of aten
             operations, forward and backward, while the objective runs the model and guide
             as Pyro programs on fake tensors (nothing is computed, no random number drawn);
    compile: ``torch.compile`` (inductor) of that graph, its random operations left to aten's
             own kernels (inductor's ``fallback_random``), so they draw from torch's global
             generator exactly as the eager step does, and ``--resume`` stays bitwise exact;
    replay:  every later step with that shape calls the compiled graph; no Pyro code runs.

The parameters and buffers are inputs of the graph, not constants in it (a frozen group in an
E- or M-step is still read live), and so is the KL weight (its warm-up changes every step); the
learning rate lives in the optimizer, which stays torch's fused Adam outside the graph. The
last, smaller minibatch of an epoch gets its own graph, compiled once and then reused. A step
with Pyro's validation on (the first minibatch of every epoch, see
:func:`~pyro_vae.infer.svi.epoch_loop`) runs eagerly: the checks are the point of that step.

A model the tracer cannot follow, because it reads a tensor's value in Python (data-dependent
control flow, ``.item()``), keeps parameters in Pyro's parameter store instead of its modules,
or builds a different graph each time it is traced (a random structure drawn in Python), runs
eagerly from then on, and :class:`CompiledLoss` reports why in one line, once.
"""

import contextlib
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pyro
import pyro.infer.trace_elbo
import pyro.infer.trace_mean_field_elbo
import torch
from pyro.poutine.messenger import Messenger
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from pyro_vae.devices import forked_rng
from pyro_vae.models.base import LatentModel

__all__ = ["AUTO_COMPILE_STEPS", "COMPILE_CHOICES", "CompiledLoss"]

#: ``--compile`` settings; ``auto``, the default, is settled as ``on`` or ``off`` once, when a
#: run is created (:func:`pyro_vae.runs.fit.setup`), and recorded so.
COMPILE_CHOICES = ("auto", "on", "off")
#: ``--compile auto`` compiles an SVI or EM run on the CPU of at least this many minibatches
#: (epochs x minibatches per epoch). A run compiles two graphs (the full and the last minibatch),
#: about 30 s with the inductor cache on this 2-core machine (2-10 s per graph warm, 15-55 s
#: cold), and every compiled step saves at least Pyro's fixed cost of about 1.3 ms (more on the
#: default network): 30 s / 1.3 ms = 23,000 steps to pay back, rounded up (docs/benchmarks.md).
AUTO_COMPILE_STEPS = 25_000

#: Pyro's ELBO modules whose ``differentiable_loss`` reads the loss back into a Python float
#: (``torch_item``) and checks it for NaN in Python (``warn_if_nan``).
_ELBO_MODULES = (pyro.infer.trace_elbo, pyro.infer.trace_mean_field_elbo)


class _NotTraceable(Exception):
    """Why a model's step cannot be traced into one graph (the message is the reason)."""


class _ParamsAsGiven(Messenger):
    """``pyro.param(name, tensor)`` returns ``tensor`` when it is one of the traced inputs,
    without touching Pyro's parameter store (``pyro.module`` registers each module parameter
    this way); any other ``pyro.param`` reads the store, which the graph cannot follow."""

    def __init__(self, inputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.inputs = {id(t) for t in inputs}

    def _pyro_param(self, msg: dict) -> None:
        args = msg["args"]
        if len(args) < 2 or id(args[1]) not in self.inputs:
            raise _NotTraceable(
                f"pyro.param({args[0]!r}) reads Pyro's parameter store, not a module parameter"
            )
        msg["value"] = args[1]


@contextlib.contextmanager
def _losses_as_tensors() -> Iterator[None]:
    """While tracing, Pyro's ELBOs keep their loss as a tensor (``torch_item`` detaches instead
    of reading the value into Python) and skip their NaN warning: a value read in Python would
    be frozen into the graph. The step checks the loss for non-finite values after the replay."""
    saved = [(m, m.torch_item, getattr(m, "warn_if_nan", None)) for m in _ELBO_MODULES]
    try:
        for module, _, warn in saved:
            module.torch_item = lambda x: x.detach() if torch.is_tensor(x) else x
            if warn is not None:
                module.warn_if_nan = lambda value, msg="", **kwargs: value
        yield
    finally:
        for module, item, warn in saved:
            module.torch_item = item
            if warn is not None:
                module.warn_if_nan = warn


class _Objective(nn.Module):
    """``objective(vae.model, vae.guide, x, kl_weight)`` as a module's forward, so that
    ``torch.func.functional_call`` can run it on other tensors than the parameters."""

    def __init__(self, vae: LatentModel, objective: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.vae = vae
        self.objective = objective

    def forward(self, x: torch.Tensor, kl_weight: torch.Tensor) -> torch.Tensor:
        return self.objective(self.vae.model, self.vae.guide, x, kl_weight)


#: Raised by the tracer when a program reads a fake tensor's value in Python.
_DATA_DEPENDENT = (GuardOnDataDependentSymNode, DataDependentOutputException)
_LIBRARIES = tuple(str(Path(m.__file__).parent) for m in (torch, pyro)) + (__file__,)


def _why(exc: Exception) -> str:
    """One line for an exception of the tracer or compiler, with the innermost line of the
    model's own code (outside torch, Pyro and this module) that it came from."""
    if isinstance(exc, _DATA_DEPENDENT):
        why = "its programs read a tensor's value in Python (.item(), if on a tensor)"
    else:
        text = (str(exc).strip().splitlines() or [""])[0]
        if len(text) > 120:  # torch's messages go on with advice for its own developers
            text = text[:120].rsplit(" ", 1)[0] + " ..."
        why = f"the tracer or compiler stopped: {type(exc).__name__}: {text}"
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith(_LIBRARIES)]
    return f"{why} (at {own[-1].filename}:{own[-1].lineno})" if own else why


class CompiledLoss:
    """The loss of ``objective`` on a minibatch and its gradient, by a compiled graph.

    Calling it computes ``loss`` (summed over ``x``), fills each of ``params``' ``.grad`` with
    the gradient of ``loss / batch_size`` (the other parameters' ``.grad`` are left alone) and
    returns ``(loss, norm)``, ``norm`` the gradient's total 2-norm; or returns None when the
    step must run eagerly (Pyro's validation is on, or the model cannot be traced: then
    :attr:`reason` says why and ``report`` has said it once).

    Args:
        vae: the model and guide (their parameters must be its modules' parameters).
        objective: ``loss(model, guide, x, kl_weight)`` from :func:`pyro_vae.make_objective`.
        report: called with one line when a graph is compiled (with the seconds it took) and
            when the model falls back to eager steps; the default prints to stderr.
    """

    def __init__(
        self,
        vae: LatentModel,
        objective: Callable[..., torch.Tensor],
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.vae = vae
        self.module = _Objective(vae, objective)
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.names = [name for name, _ in self.module.named_parameters()]
        self.buffer_names = [name for name, _ in self.module.named_buffers()]
        self.reason: str | None = None
        self.seconds = 0.0  # compile time, all graphs together
        self.inputs = [p for _, p in self.module.named_parameters()]
        self.inputs += [b for _, b in self.module.named_buffers()]
        self._where = {id(t): i for i, t in enumerate(self.inputs)}
        self._graphs: dict[tuple, tuple[Callable[..., list[torch.Tensor]], tuple]] = {}
        self._kl = (None, None)  # the last KL weight and its tensor

    def __call__(
        self,
        x: torch.Tensor,
        batch_size: int,
        kl_weight: float,
        params: list[nn.Parameter],
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.reason is not None or pyro.infer.is_validation_enabled():
            return None
        where = self._where
        if any(id(p) not in where for p in params):
            return self._eager("a trained parameter is not a parameter of the model's modules")
        chosen = tuple(where[id(p)] for p in params)
        key = (tuple(x.shape), x.dtype, x.device, batch_size, self.vae.training, chosen)
        graph = self._graphs.get(key)
        if self._kl[0] != kl_weight or self._kl[1].device != x.device:
            self._kl = (kl_weight, torch.tensor(kl_weight, dtype=x.dtype, device=x.device))
        start = time.perf_counter()
        try:
            if graph is None:
                graph = self._compile(self.inputs, x, batch_size, chosen)
            with torch.no_grad():
                loss, norm, *grads = graph[0](self.inputs, x, self._kl[1])
        except _NotTraceable as exc:
            return self._eager(str(exc))
        except Exception as exc:  # noqa: BLE001 -- the tracer or compiler gave up: run eagerly
            return self._eager(_why(exc))
        if key not in self._graphs:
            self._graphs[key] = graph
            seconds = time.perf_counter() - start
            self.seconds += seconds
            self.report(
                f"compiled the training step for minibatches of {x.shape[0]} in {seconds:.1f} s"
            )
        grads.reverse()
        for p, used in zip(params, graph[1], strict=True):
            p.grad = grads.pop() if used else None
        return loss, norm

    def _eager(self, reason: str) -> None:
        self.reason = reason
        self.report(f"--compile: running the training step eagerly: {reason}")

    def _compile(
        self, inputs: list[torch.Tensor], x: torch.Tensor, batch_size: int, chosen: tuple
    ) -> tuple[Callable[..., list[torch.Tensor]], tuple[bool, ...]]:
        """The compiled graph of a step and which of the ``chosen`` tensors get a gradient
        (the others' ``.grad`` stays None, as in an eager step). The step is traced twice: a
        model whose graph differs between the two is refused."""
        n = len(self.names)
        names = self.names + self.buffer_names
        used: list[bool] = []  # which chosen tensors the loss depends on (others keep .grad None)

        def step(tensors: list[torch.Tensor], x: torch.Tensor, kl_weight: torch.Tensor):
            with _ParamsAsGiven(tensors[:n]):
                loss = torch.func.functional_call(
                    self.module, dict(zip(names, tensors, strict=True)), (x, kl_weight)
                )
            wrt = [tensors[i] for i in chosen]
            grads = torch.autograd.grad(loss / batch_size, wrt, allow_unused=True)
            used[:] = [g is not None for g in grads]
            grads = [g for g in grads if g is not None]
            norms = [torch.linalg.vector_norm(g) for g in grads]
            norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else loss.new_zeros(())
            return [loss.detach(), norm, *grads]

        kl = torch.ones((), dtype=x.dtype, device=x.device)
        with _losses_as_tensors(), pyro.validation_enabled(False), forked_rng(x.device):
            graphs = [make_fx(step, tracing_mode="fake")(inputs, x, kl) for _ in range(2)]
        if graphs[0].code != graphs[1].code:
            raise _NotTraceable("its programs build a different graph each time they run")
        # inductor imports torch's C++ extension helper, which warns on a CUDA build of torch
        # without a CUDA runtime ("No CUDA runtime is found"): noise for a CPU compile
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        compiled = torch.compile(
            graphs[0], fullgraph=True, dynamic=False, options={"fallback_random": True}
        )
        return compiled, tuple(used)
