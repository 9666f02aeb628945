"""Figures of a run, written as PNG files into the run's ``figures/`` folder.

- ``reconstructions.png``: test images (top row of each pair) above their reconstructions.
- ``samples.png``: means of p(x|z) for z drawn from the prior.
- ``curves.png``: training loss and test ELBO per data point against epochs (and the test
  IWAE bound where training evaluated it).
- ``manifold.png``: decoded means over a grid of latent points. For z_dim = 2 the grid is of
  standard-normal quantiles (Kingma and Welling 2014, Fig. 4), so equal areas of the picture
  carry equal prior mass; for z_dim > 2 it is a plane through the mean of the test posterior
  means, spanned by their two principal axes, at quantiles of their spread along each axis.
- ``latent.png``: test posterior means E_q[z|x], coloured by class (PCA to 2-D when z_dim > 2).
- ``interpolation.png``: decoded means along straight lines between the posterior means of
  pairs of test images (originals at both ends).
- ``random_codes.png``: decoded means of random codes, drawn from a Gaussian with the mean and
  covariance of the test codes: the same cloud for every model, so the figure shows whether the
  decoder makes sense of the space between the codes of the data (a VAE's does, a plain
  autoencoder's does not; docs/autoencoders.md).
- ``denoising.png`` (models with a corruption): clean test images, their corrupted copies, and
  the reconstructions from the corrupted copies.
- ``codebook_usage.png`` (VQ-VAEs): how many test grid positions chose each code, codes sorted
  by use, with the perplexity.
- ``rollouts.png`` (sequence models): for a few test sequences, the true frames after the
  context above sampled rollouts, and a jumpy rollout.
- ``sparsity.png`` (sparse autoencoders): each code unit's mean activation on the test images
  against the target.

:data:`FIGURES` maps each name a model lists in ``model.figures`` to its drawing function;
:func:`write_figures` draws those of the model (and the curves).
"""

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae.devices import forked_rng  # noqa: E402
from pyro_vae.evaluation.metrics import code_assignments, corrupt_fixed  # noqa: E402
from pyro_vae.models.base import LatentModel  # noqa: E402
from pyro_vae.runs.files import check_writable, write_file  # noqa: E402

__all__ = [
    "save_figure",
    "image_grid",
    "plot_reconstructions",
    "plot_samples",
    "plot_curves",
    "principal_axes",
    "plot_manifold",
    "plot_latent",
    "plot_interpolation",
    "random_code_images",
    "plot_random_codes",
    "plot_denoising",
    "plot_sparsity",
    "plot_codebook_usage",
    "plot_rollouts",
    "FIGURES",
    "IMAGE_FIGURES",
    "write_figures",
]


def save_figure(fig, path: Path, **options) -> None:
    """Write ``fig`` as a PNG through the run-file layer (whole or not at all) and close it."""
    try:
        write_file(path, lambda f: fig.savefig(f, format="png", dpi=100, **options))
    finally:
        plt.close(fig)


def image_grid(images: torch.Tensor, rows: int, image_shape: Sequence[int]) -> torch.Tensor:
    """Tile (rows * cols, D) images into one (rows * h, cols * w) array with 1-pixel gaps."""
    h, w = image_shape
    cols = images.shape[0] // rows
    grid = torch.ones(rows * (h + 1) - 1, cols * (w + 1) - 1)
    for i, img in enumerate(images[: rows * cols].reshape(-1, h, w)):
        r, c = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return grid


def _save_grid(grid: torch.Tensor, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 40 + 0.5, grid.shape[0] / 40 + 0.7))
    ax.imshow(grid.cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    save_figure(fig, path, bbox_inches="tight")


def plot_reconstructions(
    vae: LatentModel,
    x: torch.Tensor,
    path: Path,
    image_shape: Sequence[int],
    pairs: int = 3,
    cols: int = 10,
) -> None:
    """Rows of originals, each above the row of their reconstructions."""
    x = x[: pairs * cols]
    recon = vae.reconstruct(x.to(_device(vae))).cpu()
    rows = [
        t
        for i in range(pairs)
        for t in (x[i * cols : (i + 1) * cols], recon[i * cols : (i + 1) * cols])
    ]
    grid = image_grid(torch.cat(rows), rows=2 * pairs, image_shape=image_shape)
    _save_grid(grid, "test images (odd rows) and their reconstructions (even rows)", path)


def plot_samples(
    vae: LatentModel,
    path: Path,
    image_shape: Sequence[int],
    n: int = 8,
    temperature: float = 1.0,
) -> None:
    """An n x n grid of p(x|z) means for z ~ p(z) (a VQ-VAE's code prior at ``temperature``
    when it is not 1)."""
    if temperature == 1:
        x, title = vae.sample(n * n), "samples: mean of p(x|z), z ~ p(z)"
    else:
        x = vae.sample(n * n, temperature=temperature)
        title = f"samples: mean of p(x|z), z ~ p(z) at temperature {temperature:g}"
    _save_grid(image_grid(x.cpu(), rows=n, image_shape=image_shape), title, path)


LONG_RUN = 50  # epochs above which curves lose their markers and the epoch axis turns log-scale


def plot_curves(metrics: list[dict[str, float]], path: Path) -> None:
    """Training objective and test ELBO (nats per data point) against epochs; for a model
    without an ELBO, its test reconstruction term. A long run (more than LONG_RUN epochs) is
    drawn on a log-scale epoch axis, without the first 1% of its epochs setting the y range, so
    that its late, slow progress stays visible."""
    epochs = [m["epoch"] for m in metrics]
    long = len(epochs) > LONG_RUN
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    curves = {"train (-loss)": [-m["train_loss"] for m in metrics]}
    if any(math.isfinite(m["test_elbo"]) for m in metrics):
        curves["test ELBO"] = [m["test_elbo"] for m in metrics]
    else:  # a model without an ELBO (the autoencoder): its reconstruction term
        curves["test log p(x | f(x))"] = [m["test_recon"] for m in metrics]
    if "val_elbo" in metrics[0] and metrics[0]["val_elbo"] == metrics[0]["val_elbo"]:
        curves["validation ELBO"] = [m["val_elbo"] for m in metrics]
    for (label, values), marker in zip(curves.items(), "os^", strict=False):
        ax.plot(epochs, values, "-" if long else marker + "-", label=label)
    iwae = [
        (m["epoch"], m["test_iwae"])
        for m in metrics
        if m.get("test_iwae", math.nan) == m.get("test_iwae")
    ]
    if iwae:
        ax.plot(
            *zip(*iwae, strict=True),
            "D",
            ms=3 if long else 6,
            label="test IWAE bound (subset, small K)",
        )
    ax.set_xlabel("epoch")
    if long:
        ax.set_xscale("log")
        late = [
            v
            for values in curves.values()
            for e, v in zip(epochs, values, strict=True)
            if e >= 0.01 * epochs[-1] and math.isfinite(v)
        ]
        top = max(late + [v for _, v in iwae])
        ax.set_ylim(min(late) - 0.05 * (top - min(late)), top + 0.05 * (top - min(late)))
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def _device(vae: LatentModel) -> torch.device:
    return next(vae.parameters()).device


def _posterior_means(vae: LatentModel, x: torch.Tensor) -> torch.Tensor:
    device = _device(vae)
    return torch.cat([vae.codes(x[i : i + 1000].to(device)) for i in range(0, len(x), 1000)])


def principal_axes(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre (z_dim,), the top two principal axes (2, z_dim) and the spread along each (2,)."""
    centre = z.mean(0)
    _, s, vh = torch.linalg.svd(z - centre, full_matrices=False)
    return centre, vh[:2], s[:2] / max(len(z) - 1, 1) ** 0.5


def plot_manifold(
    vae: LatentModel, test: torch.Tensor, path: Path, image_shape: Sequence[int], n: int = 15
) -> None:
    """Decode an n x n grid of standard-normal quantiles (z_dim = 2) or a principal plane; for
    z_dim = 1 a strip of n quantiles."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.5 / n, 1 - 0.5 / n, n))
    if _posterior_means(vae, test[:1]).shape[1] == 1:
        images = vae.decode_mean(q[:, None].to(_device(vae))).cpu()
        title = "latent manifold: z at N(0, 1) quantiles"
        _save_grid(image_grid(images, rows=1, image_shape=image_shape), title, path)
        return
    # rows run top to bottom from high to low values of the second coordinate, like a plot
    a, b = torch.meshgrid(-q, q, indexing="ij")
    grid = torch.stack([b.reshape(-1), a.reshape(-1)], dim=1)
    z_dim = _posterior_means(vae, test[:1]).shape[1]
    device = next(vae.parameters()).device
    if z_dim == 2:
        z, title = grid, "latent manifold: z on a grid of N(0, 1) quantiles"
    else:
        centre, axes, spread = principal_axes(_posterior_means(vae, test).cpu())
        z = centre + (grid * spread) @ axes
        title = "latent manifold: plane of the two principal axes of E_q[z|x]"
    images = vae.decode_mean(z.to(device)).cpu()
    _save_grid(image_grid(images, rows=n, image_shape=image_shape), title, path)


def plot_latent(
    vae: LatentModel, test: torch.Tensor, labels: torch.Tensor | None, path: Path, limit: int = 5000
) -> None:
    """Scatter of test posterior means, coloured by class; PCA to 2-D when z_dim > 2."""
    z = _posterior_means(vae, test[:limit]).cpu()
    if z.shape[1] > 2:
        centre, axes, spread = principal_axes(z)
        points = (z - centre) @ axes.T
        share = spread.pow(2) / z.var(0).sum()
        xlabel, ylabel = (f"PC{i + 1} ({100 * float(share[i]):.0f}% of variance)" for i in (0, 1))
    elif z.shape[1] == 1:  # a 1-D latent: its value against the class (or a spread)
        rows = labels[:limit].float() if labels is not None else torch.rand(len(z))
        points, xlabel, ylabel = torch.cat([z, rows[:, None]], 1), "z", "class"
    else:
        points, xlabel, ylabel = z, "z1", "z2"
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    colour = labels[:limit].numpy() if labels is not None else None
    colours = (
        {"c": colour, "cmap": "tab10", "vmin": -0.5, "vmax": 9.5} if colour is not None else {}
    )
    sc = ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, linewidths=0, **colours)
    if colour is not None:
        fig.colorbar(sc, ax=ax, ticks=range(10), label="class")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"posterior means E_q[z|x] of {len(points)} test images", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _pairs(labels: torch.Tensor | None, n: int, rows: int) -> list[tuple[int, int]]:
    """Index pairs of test images, of different classes when labels are known."""
    if labels is None:
        return [(2 * r, 2 * r + 1) for r in range(rows) if 2 * r + 1 < n]
    firsts = {}
    for i, c in enumerate(labels[:n].tolist()):
        firsts.setdefault(c, i)
    classes = sorted(firsts)
    pairs = [
        (firsts[classes[r % len(classes)]], firsts[classes[(r + 1) % len(classes)]])
        for r in range(rows)
    ]
    return [(i, j) for i, j in pairs if i != j] or [(0, min(1, n - 1))]


def plot_interpolation(
    vae: LatentModel,
    test: torch.Tensor,
    labels: torch.Tensor | None,
    path: Path,
    image_shape: Sequence[int],
    rows: int = 6,
    steps: int = 10,
) -> None:
    """Each row: a test image, decoded means along the line between the two posterior means,
    the other test image."""
    pairs = _pairs(labels, len(test), rows)
    device = next(vae.parameters()).device
    t = torch.linspace(0.0, 1.0, steps)[:, None]
    images = []
    for i, j in pairs:
        za, zb = _posterior_means(vae, test[[i, j]]).cpu()
        line = vae.decode_mean(((1 - t) * za + t * zb).to(device)).cpu()
        images += [test[i : i + 1].cpu(), line, test[j : j + 1].cpu()]
    grid = image_grid(torch.cat(images), rows=len(pairs), image_shape=image_shape)
    _save_grid(grid, "interpolation in latent space (test images at both ends)", path)


def random_code_images(vae: LatentModel, test: torch.Tensor, n: int) -> torch.Tensor:
    """Means of p(x|z) for n codes z ~ N(mean, covariance of the model's codes of ``test``)."""
    codes = _posterior_means(vae, test).cpu().double()
    centre = codes.mean(0)
    cov = torch.cov(codes.T).reshape(len(centre), len(centre))
    cov += 1e-6 * cov.diagonal().mean().clamp(min=1e-6) * torch.eye(len(centre), dtype=cov.dtype)
    gaussian = torch.distributions.MultivariateNormal(centre, covariance_matrix=cov)
    z = gaussian.sample((n,)).float()
    return vae.decode_mean(z.to(_device(vae))).cpu()


def plot_random_codes(
    vae: LatentModel, test: torch.Tensor, path: Path, image_shape: Sequence[int], n: int = 8
) -> None:
    """An n x n grid of :func:`random_code_images`."""
    images = random_code_images(vae, test, n * n)
    title = "random codes: z ~ N(mean, covariance of the test codes), decoded"
    _save_grid(image_grid(images, rows=n, image_shape=image_shape), title, path)


def plot_denoising(
    vae: LatentModel, test: torch.Tensor, path: Path, image_shape: Sequence[int], cols: int = 10
) -> None:
    """Rows of clean test images, their corrupted copies (the fixed test corruption of
    :func:`~pyro_vae.evaluation.metrics.corrupt_fixed`) and the reconstructions from those."""
    x = test[:cols].to(_device(vae))
    noisy = corrupt_fixed(x, vae.corruption.spec)
    rows = [x.cpu(), noisy.clamp(0, 1).cpu(), vae.reconstruct(noisy).cpu()]
    grid = image_grid(torch.cat(rows), rows=3, image_shape=image_shape)
    title = f"clean / corrupted ({vae.corruption.spec}) / reconstructed from the corrupted row"
    _save_grid(grid, title, path)


def plot_sparsity(vae: LatentModel, test: torch.Tensor, path: Path) -> None:
    """Each code unit's mean activation over the test images, against the target rho."""
    rho_hat = _posterior_means(vae, test).mean(0).cpu()
    fig, ax = plt.subplots(figsize=(6.2, 3.2))
    ax.bar(range(len(rho_hat)), rho_hat.numpy(), color="C0", label="mean activation")
    ax.axhline(vae.sparsity, color="C3", linestyle="--", label=f"target rho = {vae.sparsity:g}")
    ax.set_xlabel("code unit j")
    ax.set_ylabel("mean activation rho_hat_j")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def plot_codebook_usage(vae: LatentModel, test: torch.Tensor, path: Path) -> None:
    """Bars of each code's share of the test grid positions, most used first."""
    counts = code_assignments(vae, test.to(_device(vae))).cpu().double()
    share = (counts / counts.sum()).sort(descending=True).values
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    fig, ax = plt.subplots(figsize=(6.2, 3.2))
    ax.bar(range(len(share)), share.numpy(), width=1.0, color="C0")
    ax.set_xlabel("code, by rank of use")
    ax.set_ylabel("share of test positions")
    used = int((counts > 0).sum())
    title = f"codebook usage: {used} of {len(counts)} codes used, perplexity {entropy.exp():.1f}"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_rollouts(
    model: LatentModel, test: torch.Tensor, path: Path, image_shape: Sequence[int], n: int = 4
) -> None:
    """For ``n`` test sequences: the last context frame and the true future, then three sampled
    rollouts (one transition per frame) and a jumpy one (one transition per ``max_jump``
    frames, shown at its frames; blank between)."""
    d, t = model.frame_dim, model.seq_len
    context, jump = t // 2, model.max_jump
    x = test[:n].to(_device(model))
    past, future = x[:, : context * d], x[:, context * d :].reshape(n, t - context, d)
    rollouts = model.rollout(past, t - context, samples=3)  # (3, n, H, d)
    jumpy = torch.ones(n, t - context, d, device=x.device)
    if t - context >= jump:
        jumpy[:, jump - 1 :: jump] = model.rollout(past, (t - context) // jump, 1, jump)[0]
    last = past[:, -d:]
    rows = []
    for i in range(n):
        for frames_ in (future[i], *rollouts[:, i], jumpy[i]):
            rows.append(torch.cat([last[i : i + 1], frames_]))
    grid = image_grid(torch.cat(rows).cpu(), rows=5 * n, image_shape=image_shape)
    title = "per sequence: truth, 3 rollouts, jumpy rollout (first column: last observed frame)"
    _save_grid(grid, title, path)


#: Figures that draw data points as images: drawn only for data that are images.
IMAGE_FIGURES = (
    "reconstructions",
    "samples",
    "random_codes",
    "manifold",
    "interpolation",
    "denoising",
    "rollouts",
)

#: figure name (as models list them in ``model.figures``) -> fn(model, test, labels, path, shape)
FIGURES: dict[str, Callable] = {
    "reconstructions": lambda m, x, y, path, shape: plot_reconstructions(m, x, path, shape),
    "samples": lambda m, x, y, path, shape: plot_samples(m, path, shape),
    "random_codes": lambda m, x, y, path, shape: plot_random_codes(m, x, path, shape),
    "manifold": lambda m, x, y, path, shape: plot_manifold(m, x, path, shape),
    "latent": lambda m, x, y, path, shape: plot_latent(m, x, y, path),
    "interpolation": lambda m, x, y, path, shape: plot_interpolation(m, x, y, path, shape),
    "denoising": lambda m, x, y, path, shape: plot_denoising(m, x, path, shape),
    "sparsity": lambda m, x, y, path, shape: plot_sparsity(m, x, path),
    "codebook_usage": lambda m, x, y, path, shape: plot_codebook_usage(m, x, path),
    "rollouts": lambda m, x, y, path, shape: plot_rollouts(m, x, path, shape),
}


def write_figures(
    vae: LatentModel,
    test: torch.Tensor,
    metrics: list[dict[str, float]],
    folder: Path,
    image_shape: Sequence[int] | None = (28, 28),
    labels: torch.Tensor | None = None,
) -> list[Path]:
    """Write every figure the model lists (``vae.figures``) into ``folder``, and the training
    curves; returns the paths written. Data that are not images (``image_shape`` None) get
    only the figures that do not draw them (:data:`IMAGE_FIGURES`).

    ``labels`` (classes of the test images) colour the latent scatter and pick interpolation
    pairs of different classes; without them the scatter is one colour. Random draws (samples,
    random codes) come from a forked RNG seeded with 0, so figures do not move the run's RNG and
    ``pyro-vae plot`` redraws the same pictures.
    """
    check_writable(folder, root=folder.parent)  # figures/ must not be a link
    names = [n for n in vae.figures if image_shape is not None or n not in IMAGE_FIGURES]
    paths = [folder / f"{name}.png" for name in names]
    was_training = vae.training
    vae.eval()
    with torch.no_grad(), forked_rng(_device(vae)):
        torch.manual_seed(0)
        for name, path in zip(names, paths, strict=True):
            FIGURES[name](vae, test, labels, path, image_shape)
    vae.train(was_training)
    if metrics:
        paths.append(folder / "curves.png")
        plot_curves(metrics, paths[-1])
    return paths
