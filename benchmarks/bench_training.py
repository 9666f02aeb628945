"""Time pyro-vae's SVI and EM training against hand-written PyTorch, interleaved in one process.

Both train the same networks (copies of one initialisation), on the same MNIST tensors and
minibatch order, with the same optimizer (torch's fused Adam, which the library uses; see
bench_step.py for torch's default Adam) and objective:
  - meanfield: library `--elbo meanfield` (TraceMeanField_ELBO) vs hand-written BCE + closed-form KL
  - trace:     library `--elbo trace` (Trace_ELBO) vs hand-written BCE + Monte Carlo KL
and for variational EM (``--algos em``) the library's ``EMTrainer`` with ``--e-rule fixed`` against
a hand-written loop doing the same K encoder-only steps and one decoder-only step per minibatch.
Epochs alternate A, B, A, B, ... so that machine noise hits both alike; the script prints each
epoch's seconds and the median ratio library / hand-written.

    python benchmarks/bench_training.py --quick          # ~1 minute
    python benchmarks/bench_training.py --repeats 5      # a few minutes

Needs MNIST (PYRO_VAE_DATA_DIR or --data-dir); --synthetic uses random binary data instead.
"""

import argparse
import copy
import math
import resource
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_vae import EMTrainer, SVITrainer, build_vae, load_data, make_objective, minibatches
from pyro_vae.em import random_minibatch


def hand_written_loss(encoder, decoder, x: torch.Tensor, analytic_kl: bool) -> torch.Tensor:
    """-ELBO per data point of the plain-PyTorch VAE (Kingma and Welling 2014, Appendix B)."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(loc)
    recon = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    if analytic_kl:
        kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum()
    else:
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum()
        log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        kl = log_q - log_p
    return (recon + kl) / x.shape[0]


def hand_written_epoch(encoder, decoder, optimizer, x, batch_size, g, analytic_kl) -> float:
    total = torch.zeros(())
    for xb in minibatches(x, batch_size, g):
        loss = hand_written_loss(encoder, decoder, xb, analytic_kl)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * xb.shape[0]
    return total.item() / x.shape[0]


def hand_written_em_epoch(
    encoder, decoder, e_opt, m_opt, x, batch_size, g, e_steps: int, analytic_kl: bool
) -> float:
    """The work of the library's EM epoch with ``--e-rule fixed --e-steps K``, by hand: per
    minibatch, K encoder-only steps (the first on the minibatch, the rest on fresh random ones),
    then one decoder-only step on the minibatch."""
    enc, dec = list(encoder.parameters()), list(decoder.parameters())
    fresh = random_minibatch(x, batch_size, g)
    total = torch.zeros(())
    for xb in minibatches(x, batch_size, g):
        batch = xb
        for _ in range(e_steps):
            loss = hand_written_loss(encoder, decoder, batch, analytic_kl)
            e_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=enc)
            e_opt.step()
            batch = fresh()
        loss = hand_written_loss(encoder, decoder, xb, analytic_kl)
        m_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=dec)
        m_opt.step()
        total += loss.detach() * xb.shape[0]
    return total.item() / x.shape[0]


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def compare(
    x: torch.Tensor,
    objective: str,
    repeats: int,
    batch_size: int,
    algo: str = "svi",
    e_steps: int = 5,
):
    """Median seconds per epoch of the library and of the hand-written loop, and their median
    ratio, for ``algo`` ``svi`` (joint steps) or ``em`` (``--e-rule fixed --e-steps K``)."""
    torch.manual_seed(0)
    vae = build_vae(x.shape[1], z_dim=50, hidden_dims=(400,))
    encoder, decoder = copy.deepcopy(vae.encoder), copy.deepcopy(vae.decoder)
    analytic = objective == "meanfield"
    g_lib, g_hand = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    if algo == "svi":
        trainer = SVITrainer(vae, make_objective(objective), lr=1e-3)
        groups = [{"params": list(encoder.parameters())}, {"params": list(decoder.parameters())}]
        hand_opt = torch.optim.Adam(groups, lr=1e-3, fused=True)

        def hand_epoch():
            return hand_written_epoch(encoder, decoder, hand_opt, x, batch_size, g_hand, analytic)
    else:
        trainer = EMTrainer(vae, make_objective(objective), e_rule="fixed", e_steps=e_steps)
        e_opt = torch.optim.Adam(encoder.parameters(), lr=1e-3, fused=True)
        m_opt = torch.optim.Adam(decoder.parameters(), lr=1e-3, fused=True)

        def hand_epoch():
            return hand_written_em_epoch(
                encoder, decoder, e_opt, m_opt, x, batch_size, g_hand, e_steps, analytic
            )

    lib_s, hand_s = [], []
    name = f"{algo} {objective}"
    for r in range(repeats):
        s, lib_loss = timed(lambda: trainer.train_epoch(x, batch_size, g_lib, check=False))
        lib_s.append(s)
        s, hand_loss = timed(hand_epoch)
        hand_s.append(s)
        print(
            f"  {name:13s} epoch {r + 1}: pyro-vae {lib_s[-1]:6.2f}s "
            f"(loss {lib_loss:7.2f})   hand-written {hand_s[-1]:6.2f}s "
            f"(loss {hand_loss:7.2f})   ratio {lib_s[-1] / hand_s[-1]:.3f}",
            flush=True,
        )
    ratios = [a / b for a, b in zip(lib_s, hand_s, strict=True)]
    return statistics.median(lib_s), statistics.median(hand_s), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--synthetic", action="store_true", help="random data, no MNIST needed")
    parser.add_argument("--quick", action="store_true", help="10k images, 3 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--objectives", nargs="+", default=["meanfield", "trace"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--algos", nargs="+", default=["svi", "em"], choices=("svi", "em"))
    parser.add_argument("--e-steps", type=int, default=5, help="EM: encoder steps per M-step")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.limit_train = 3, args.limit_train or 10000
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        x = torch.bernoulli(torch.full((args.limit_train or 60000, 784), 0.13))
    else:
        x = load_data("mnist", args.data_dir, "static", limit_train=args.limit_train).train
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}"
        f", N = {x.shape[0]}, batch {args.batch_size}, 784-400-50"
    )
    rows = [
        (algo, name, *compare(x, name, args.repeats, args.batch_size, algo, k))
        for algo in args.algos
        for name in args.objectives
        for k in [args.e_steps]
    ]
    print("\n| algorithm | objective | pyro-vae s/epoch | hand-written s/epoch | median ratio |")
    print("| --- | --- | --- | --- | --- |")
    for algo, name, lib, hand, ratio in rows:
        label = f"em (fixed, {args.e_steps} E-steps)" if algo == "em" else algo
        print(f"| {label} | {name} | {lib:.2f} | {hand:.2f} | {ratio:.3f} |")
    # Both loops run in this process, so this peak covers both (they hold the same tensors).
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of the process: {peak_mb:.0f} MB")
    assert all(math.isfinite(r[-1]) for r in rows)


if __name__ == "__main__":
    main()
