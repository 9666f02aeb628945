"""keep_freed_memory: glibc keeps evaluation's freed chunks, so repeated chunks fault no pages."""

import subprocess
import sys
import textwrap

import pytest
from conftest import HANG_GUARD_S

from pyro_vae import memory
from pyro_vae.memory import keep_freed_memory

# One log-likelihood evaluation, then a second one whose minor page faults are printed: with
# glibc's own thresholds a 100 x 100 chunk hands its memory back to the kernel and the next one
# faults it in again; with keep_freed_memory the second evaluation reuses the first one's memory.
FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from pyro_vae import build_vae, keep_freed_memory, log_likelihood
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = build_vae(784)
    x = torch.bernoulli(torch.full((300, 784), 0.13))
    log_likelihood(vae, x, num_samples=600)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    log_likelihood(vae, x, num_samples=600)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    command = [sys.executable, "-c", FAULTS, mode]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(memory._glibc() is None, reason="mallopt's thresholds are glibc's")
def test_evaluation_reuses_its_memory_instead_of_faulting_it_in_again():
    kept, default = _faults("keep"), _faults("default")
    # 18 chunks of about 110 MB each (27,000 pages of 4 KiB). Kept: the second evaluation
    # reuses the first one's memory; at most the heap grows once by a block or two (measured:
    # 0 to 10,431 pages). Without the setting, chunks fault their memory in again (measured:
    # 54,664 pages and more at 9 chunks).
    assert kept < 16_000, kept
    assert default > 50_000, default


@pytest.mark.skipif(memory._glibc() is None, reason="mallopt's thresholds are glibc's")
def test_keep_freed_memory_is_idempotent():
    assert keep_freed_memory() and keep_freed_memory()


def test_without_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert keep_freed_memory() is False
