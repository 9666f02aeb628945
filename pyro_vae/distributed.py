"""Data-parallel training over processes and machines with ``torch.distributed``.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), :func:`init_from_env` joins the process group: gloo on CPU, NCCL on CUDA with
one GPU per process (``cuda:LOCAL_RANK``). Without torchrun, or with one process, nothing is
initialised and every function here is a no-op that returns its input, so the single-process
code path is unchanged bit for bit.

How a data-parallel step works (see docs/distributed.md):

- every rank holds the same parameters (broadcast from rank 0 at the start) and shuffles with
  the same data seed, so all ranks see the same global minibatch of ``batch_size * world``
  images; :func:`shard` gives each rank its contiguous part;
- each rank backpropagates its summed loss divided by the *global* minibatch size, and
  :func:`all_reduce_gradients` sums the gradients (and the loss) over ranks: the result is the
  gradient of the global minibatch's mean loss, identical on every rank, so every optimizer
  takes the same step;
- decisions that depend on numbers (the EM ``converge`` rule, a diverged loss) read these
  reduced numbers, so every rank decides the same; numbers computed on one rank only (the
  ``aggressive`` rule's mutual information) are sent from rank 0 with :func:`from_main`.

Why collectives rather than ``DistributedDataParallel``: DDP reduces the gradients of all its
module's parameters during ``backward()``, whereas the trainers call
``backward(inputs=group)`` to update one parameter group at a time (variational EM's guide-only
E-steps and model-only M-steps), and a Pyro loss is a function of the whole model and guide,
not the ``forward`` of one module. One explicit all-reduce of the updated group's gradients
after ``backward`` is what DDP computes, for any group.
"""

import atexit
import datetime
import gc
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from pyro_vae.errors import UserError

__all__ = [
    "launched",
    "init_from_env",
    "active",
    "rank",
    "world_size",
    "is_main",
    "shard",
    "all_reduce_gradients",
    "all_sum",
    "from_main",
    "on_main",
    "all_gather",
    "broadcast_module",
    "barrier",
]

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> None:
    """Join the process group torchrun describes in the environment; no-op when not launched
    or already joined. ``device`` ``cuda`` selects NCCL and the GPU ``LOCAL_RANK``."""
    if not launched() or dist.is_initialized():
        return
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} is not; launch with torchrun")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    atexit.register(_shutdown)


def _shutdown() -> None:
    """At exit: wait until every rank is done (at most 30 s, so a rank that died cannot hold the
    others), then destroy the process group while the interpreter is still whole. Without the
    wait, a rank could tear down its connections while a peer's gloo threads still finish the
    last collective, which now and then aborts the peer (SIGABRT, "terminate called without an
    active exception") after a run that otherwise completed."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
        except RuntimeError:
            pass  # a rank has gone: nothing left to wait for
    gc.collect()  # release finished work handles (and their tensors) while Python is whole
    dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and prints."""
    return rank() == 0


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of ``x`` along dim 0 (sizes differ by at most one row)."""
    if not active():
        return x
    return x.tensor_split(world_size())[rank()]


def _device() -> torch.device:
    """Where collectives run: the current GPU under NCCL, else the CPU."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    """Sum the ``.grad`` of ``params`` and ``loss`` over ranks in one all-reduce; returns the
    summed loss. Parameters without a gradient (the same on every rank) are skipped."""
    if not active():
        return loss
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1].to(loss.dtype)


def all_sum(values: list[float]) -> list[float]:
    """Sum a list of numbers over ranks (in float64); every rank gets the sums."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(job: Callable[[], T]) -> T:
    """Run ``job`` on rank 0 only and return its result on every rank; a :class:`UserError`
    it raises is raised on every rank (so no rank waits for one that has stopped)."""
    if not active():
        return job()
    outcome: tuple = (None, None)
    if is_main():
        try:
            outcome = (job(), None)
        except UserError as exc:
            outcome = (None, exc)
    result, error = from_main(outcome)
    if error is not None:
        raise error
    return result


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    if not active():
        return [value]
    out: list = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def barrier() -> None:
    """Wait until every rank gets here."""
    if active():
        dist.barrier()
