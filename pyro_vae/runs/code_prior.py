"""Stage 2 of a VQ-VAE: ``pyro-vae fit-prior RUN --prior SPEC``.

Stage 1 (``pyro-vae train --model vqvae``) trains encoder, codebook and decoder under the
uniform code prior. This fits another prior over the code grids k(x) of the training set by
maximum likelihood (Adam on -log p(k), minibatches of grids), leaving the rest of the run
untouched. With dynamic binarization every epoch encodes a fresh binarization of the training
images, as stage 1 saw them.

The bound on the held-out log-likelihood under the fitted prior is the VQ-VAE's own ELBO with the
prior swapped in, log p(x | z_q(x)) + log p(k(x)) (:func:`pyro_vae.evaluation.elbo.evaluate_elbo`
on the run's test set), so the numbers are those the Pyro programs define.

Everything goes into the run folder, under ``priors/NAME/``: ``prior.pt`` (the spec and the
fitted state), ``metrics.csv`` (per epoch: train and test code NLL, seconds), ``eval.json``
(the test bound and code NLL) and ``samples.png`` (ancestral samples, decoded).
:func:`prior_table` lists the uniform prior and every fitted one.
"""

import csv
import io
import json
import math
import re
import time
from pathlib import Path

import torch
from torch import nn

from pyro_vae.devices import forked_rng
from pyro_vae.errors import UserError
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.evaluation.figures import plot_samples
from pyro_vae.models.code_priors import check_code_prior_spec, make_code_prior
from pyro_vae.models.vqvae import VQVAE
from pyro_vae.plugins import absolute_file_spec, from_run_folder
from pyro_vae.runs.files import check_writable, read_file, write_file, write_torch
from pyro_vae.runs.fit import load_run, load_vae
from pyro_vae.runs.folder import load_tensors

__all__ = ["fit_code_prior", "load_code_prior", "prior_table", "code_grids"]


@torch.no_grad()
def code_grids(model: VQVAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """k(x) for every row of ``x``, shape (N, G)."""
    was_training = model.training
    model.eval()
    grids = [model.code_indices(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(grids)


@torch.no_grad()
def _code_nll(prior: nn.Module, grids: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean -log p(k) over ``grids``, in nats per grid."""
    total = sum(
        -prior().log_prob(grids[i : i + batch_size]).sum().item()
        for i in range(0, len(grids), batch_size)
    )
    return total / len(grids)


def fit_code_prior(
    run_dir: str | Path,
    spec: str = "transformer",
    prior: nn.Module | None = None,
    name: str | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    data_dir: str | None = None,
    quiet: bool = False,
    device: str = "cpu",
) -> dict:
    """Fit a code prior to the VQ-VAE of ``run_dir``; returns its ``eval.json`` record.

    ``spec``: a built-in prior (:mod:`pyro_vae.models.code_priors`); or ``prior``: a module of
    your own that follows the code-prior protocol, saved under ``name`` (default ``custom``).
    ``device``: where the VQ-VAE and the prior run (``cuda``: the GPU).
    """
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--lr", lr)):
        if not value > 0:
            raise UserError(f"{flag} must be positive (got {value})")
    if prior is None:
        spec = absolute_file_spec(spec)  # prior.pt records it: reloads from any folder
        check_code_prior_spec(spec)  # a bad spec is a UserError before anything is loaded
        name = name or _folder_name(spec)
    else:
        spec, name = "custom", name or "custom"
    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise UserError(
            f"a prior's name must be a plain folder name (letters, digits, ._-): {name!r}"
        )
    model, data, stage1_epoch = load_run(run_dir, data_dir, device=device)
    if not isinstance(model, VQVAE):
        raise UserError(f"{run_dir} holds a {type(model).__name__}; fit-prior needs a VQ-VAE run")
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    if prior is None:
        prior = make_code_prior(spec, model.codebook.size, model.num_positions)
    prior.to(device)
    test_grids = code_grids(model, data.test.to(device))
    folder = Path(run_dir) / "priors" / name
    check_writable(folder, root=run_dir)  # before training, not after; never through a link
    rows = _train(prior, model, data, test_grids, epochs, batch_size, lr, seed, quiet)
    write_file(folder / "metrics.csv", _csv(rows))
    state = {"spec": spec, "state": prior.state_dict(), "epochs": len(rows)}
    write_torch(folder / "prior.pt", state)
    model.prior = prior
    bound = evaluate_elbo(model, data.test.to(device))
    result = {
        "prior": name,
        "spec": spec,
        "run": str(run_dir),
        "stage1_epoch": stage1_epoch,
        "epochs": len(rows),
        "num_test": int(data.test.shape[0]),
        "test_bound": bound["elbo"],
        "test_recon": bound["recon"],
        "test_code_nll": bound["kl"],
        "seconds_per_epoch": sum(r["seconds"] for r in rows) / len(rows),
    }
    write_file(folder / "eval.json", json.dumps(result, indent=2) + "\n")
    with forked_rng(device):
        torch.manual_seed(0)
        plot_samples(model.eval(), folder / "samples.png", data.image_shape)
    return result


def _folder_name(spec: str) -> str:
    """``transformer:3`` -> ``transformer-3``; ``/a/b/my.py:PixelCNN(layers=5)`` ->
    ``my.py-PixelCNN-layers-5``: the folder under ``priors/`` a spec's fit is saved in."""
    return re.sub(r"[^\w.-]+", "-", spec.rpartition("/")[2]).strip("-.") or "prior"


def _train(prior, model, data, test_grids, epochs, batch_size, lr, seed, quiet) -> list[dict]:
    """Adam on the mean -log p(k) over minibatches of training grids; one row per epoch."""
    device = test_grids.device
    generator = torch.Generator().manual_seed(seed)
    params = list(prior.parameters())
    optimizer = torch.optim.Adam(params, lr=lr) if params else None
    fixed = None if data.binarize == "dynamic" else code_grids(model, data.train.to(device))
    rows = []
    for epoch in range(1, (epochs if optimizer is not None else 1) + 1):  # uniform: one pass
        start = time.perf_counter()
        grids = (
            fixed
            if fixed is not None
            else code_grids(model, data.train_epoch(generator).to(device))
        )
        total = 0.0
        for index in torch.randperm(len(grids), generator=generator).split(batch_size):
            loss = -prior().log_prob(grids[index.to(device)]).mean()
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total += loss.item() * len(index)
        if not math.isfinite(total):
            raise UserError(f"the prior's loss became {total} in epoch {epoch}; try a lower --lr")
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "train_code_nll": total / len(grids), "seconds": seconds}
        row["test_code_nll"] = _code_nll(prior, test_grids)
        rows.append(row)
        if not quiet:
            print(
                f"prior epoch {epoch:3d}  train -log p(k) {row['train_code_nll']:8.2f}  "
                f"test {row['test_code_nll']:8.2f} nats  {seconds:6.1f}s",
                flush=True,
            )
    return rows


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def load_code_prior(run_dir: str | Path, name: str, prior: nn.Module | None = None) -> nn.Module:
    """A prior fitted by :func:`fit_code_prior` (``priors/NAME/prior.pt``), rebuilt from its
    spec; a prior of your own (spec ``custom``) needs a fresh instance as ``prior``."""
    path = Path(run_dir) / "priors" / name / "prior.pt"
    if not path.exists():
        raise UserError(f"no fitted prior {name!r} in {run_dir} (fit it with pyro-vae fit-prior)")
    state = load_tensors(path)
    model, _ = load_vae(str(run_dir))
    if prior is None:
        if state["spec"] == "custom":
            raise UserError(f"prior {name!r} is of your own: pass a fresh instance as prior=")
        try:
            with from_run_folder(run_dir):
                prior = make_code_prior(state["spec"], model.codebook.size, model.num_positions)
        except UserError as exc:  # a plugin that no longer imports
            raise UserError(f"cannot rebuild prior {name!r} of {run_dir}: {exc}") from None
    prior.load_state_dict(state["state"])
    return prior


def prior_table(run_dir: str | Path) -> str:
    """Markdown table of the test bound under every prior fitted to the run (``uniform``
    included when fitted: it has nothing to learn, one pass scores it)."""
    rows = []
    for path in sorted((Path(run_dir) / "priors").glob("*/eval.json")):
        r = json.loads(read_file(path, "eval.json"))
        rows.append((r["prior"], r["test_code_nll"], r["test_recon"], r["test_bound"]))
    lines = [
        "| prior | -log p(k) | log p(x given z_q) | bound on log p(x) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {c:.2f} | {rc:.2f} | {b:.2f} |" for n, c, rc, b in rows]
    return "\n".join(lines)
