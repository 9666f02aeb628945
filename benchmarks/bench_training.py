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
    python benchmarks/bench_training.py --compile on     # the library's compiled step
    python benchmarks/bench_training.py --device cuda --limit-train 59392 --batch-size 256

On a GPU (``--device cuda``) the data, networks and optimizers live there, and for SVI a fourth
loop joins: the hand-written step captured once in a CUDA graph (capturable fused Adam) and
replayed per minibatch, the fastest a Python-free step can go; it needs a training set that
is a multiple of the batch size. Times there include a ``torch.cuda.synchronize`` per epoch
(the ``.item()`` of the mean loss).

Needs MNIST (PYRO_VAE_DATA_DIR or --data-dir); --synthetic uses random binary data instead.
"""

import argparse
import copy
import math
import resource
import statistics
import subprocess
import sys
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_vae import EMTrainer, SVITrainer, build_vae, load_data, make_objective, minibatches
from pyro_vae.infer.em import random_minibatch


def hand_written_loss(encoder, decoder, x: torch.Tensor, analytic_kl: bool) -> torch.Tensor:
    """-ELBO per data point of the plain-PyTorch VAE (Kingma and Welling 2014, Appendix B)."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(loc)
    recon = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    if analytic_kl:
        kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum()
    else:
        # no argument checks: they read a value back from the GPU, which a CUDA graph forbids
        log_q = torch.distributions.Normal(loc, scale, validate_args=False).log_prob(z).sum()
        log_p = torch.distributions.Normal(0.0, 1.0, validate_args=False).log_prob(z).sum()
        kl = log_q - log_p
    return (recon + kl) / x.shape[0]


def hand_written_epoch(encoder, decoder, optimizer, x, batch_size, g, analytic_kl) -> float:
    total = torch.zeros((), device=x.device)
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
    total = torch.zeros((), device=x.device)
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


def cuda_graph_epoch_function(encoder, decoder, x, batch_size, g, analytic_kl):
    """The hand-written SVI step (forward, backward, fused capturable Adam) captured once in a
    CUDA graph; the epoch copies each minibatch into the graph's input and replays it. The
    capture's three warm-up steps train the networks too (on the first minibatch)."""
    if x.shape[0] % batch_size:
        raise SystemExit(
            f"the CUDA-graph loop needs N = {x.shape[0]} to be a multiple of the batch size "
            f"{batch_size}: pass --limit-train {x.shape[0] // batch_size * batch_size}"
        )
    params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=True)
    static_x = x[:batch_size].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, as torch's docs prescribe
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            hand_written_loss(encoder, decoder, static_x, analytic_kl).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = hand_written_loss(encoder, decoder, static_x, analytic_kl)
        static_loss.backward()
        opt.step()

    def epoch() -> float:
        total = torch.zeros((), device=x.device)
        for xb in minibatches(x, batch_size, g):
            static_x.copy_(xb)
            graph.replay()
            total += static_loss.detach() * batch_size
        return total.item() / x.shape[0]

    return epoch


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


LOOPS = ("pyro-vae", "hand-written, fused Adam", "hand-written, default Adam")
CUDA_GRAPH = "hand-written, CUDA graph"


def epoch_functions(
    x: torch.Tensor,
    objective: str,
    batch_size: int,
    algo: str = "svi",
    e_steps: int = 5,
    compile: bool = False,
) -> dict:
    """One epoch of each loop in LOOPS, as functions returning the mean loss: the library's
    trainer (``svi``, or ``em`` with ``--e-rule fixed --e-steps K``; with ``compile``, its
    compiled step, each graph compiled in the first epoch) and the same work by hand
    with the library's fused Adam and with torch's default Adam, on copies of one initialisation
    and the same minibatch order."""
    torch.manual_seed(0)
    vae = build_vae(x.shape[1], z_dim=50, hidden_dims=(400,)).to(x.device)
    analytic = objective == "meanfield"
    if algo == "svi":
        trainer = SVITrainer(vae, make_objective(objective), lr=1e-3, compile=compile)
    else:
        trainer = EMTrainer(
            vae, make_objective(objective), e_rule="fixed", e_steps=e_steps, compile=compile
        )
    g_lib = torch.Generator().manual_seed(1)
    epochs = {LOOPS[0]: lambda: trainer.train_epoch(x, batch_size, g_lib, check=False)}
    for name, fused in zip(LOOPS[1:], (True, False), strict=True):
        encoder, decoder = copy.deepcopy(vae.encoder), copy.deepcopy(vae.decoder)
        g = torch.Generator().manual_seed(1)
        if algo == "svi":
            groups = [
                {"params": list(encoder.parameters())},
                {"params": list(decoder.parameters())},
            ]
            opt = torch.optim.Adam(groups, lr=1e-3, fused=fused)
            args = (encoder, decoder, opt, x, batch_size, g, analytic)
            epochs[name] = lambda args=args: hand_written_epoch(*args)
        else:
            e_opt = torch.optim.Adam(encoder.parameters(), lr=1e-3, fused=fused)
            m_opt = torch.optim.Adam(decoder.parameters(), lr=1e-3, fused=fused)
            args = (encoder, decoder, e_opt, m_opt, x, batch_size, g, e_steps, analytic)
            epochs[name] = lambda args=args: hand_written_em_epoch(*args)
    if x.is_cuda and algo == "svi":
        encoder, decoder = copy.deepcopy(vae.encoder), copy.deepcopy(vae.decoder)
        g = torch.Generator().manual_seed(1)
        epochs[CUDA_GRAPH] = cuda_graph_epoch_function(encoder, decoder, x, batch_size, g, analytic)
    return epochs


def compare(epochs: dict, repeats: int, label: str) -> dict:
    """Median seconds per epoch of each loop, interleaved, and the median ratios of the library
    to each hand-written loop (keys ``ratio to <loop>``)."""
    seconds: dict[str, list[float]] = {name: [] for name in epochs}
    for r in range(repeats):
        line = []
        for name, epoch in epochs.items():
            s, loss = timed(epoch)
            seconds[name].append(s)
            line.append(f"{name} {s:6.2f}s (loss {loss:7.2f})")
        print(f"  {label} epoch {r + 1}: " + "   ".join(line), flush=True)
    result = {name: statistics.median(s) for name, s in seconds.items()}
    for name in [n for n in epochs if n != LOOPS[0]]:
        ratios = [a / b for a, b in zip(seconds[LOOPS[0]], seconds[name], strict=True)]
        result[f"ratio to {name}"] = statistics.median(ratios)
    return result


def memory_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MB (Linux);
    elsewhere the peak since the process started."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reset_peak_memory() -> None:
    """Restart VmHWM from the current resident size (Linux >= 4.0), so that the peak measured
    after it belongs to the training epoch and not to loading the data."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def memory_by_loop(argv: list[str]) -> dict:
    """For each loop, in a fresh process: (resident MB before one epoch, peak MB during it)."""
    result = {}
    for loop in LOOPS:
        command = [sys.executable, __file__, *argv, "--memory-probe", loop]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        before, peak = out.split()[-2:]
        result[loop] = float(before), float(peak)
    return result


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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--compile",
        choices=("on", "off"),
        default="off",
        help="the library's loop with its compiled step (compiled in its first epoch)",
    )
    parser.add_argument("--memory-probe", choices=LOOPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.limit_train = 3, args.limit_train or 10000
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        x = torch.bernoulli(torch.full((args.limit_train or 60000, 784), 0.13))
    else:
        x = load_data("mnist", args.data_dir, "static", limit_train=args.limit_train).train
    x = x.to(args.device)
    if args.memory_probe:  # one epoch of one loop (first algo and objective), its memory
        epoch = epoch_functions(x, args.objectives[0], args.batch_size, args.algos[0])
        reset_peak_memory()
        before = memory_mb("VmRSS")
        epoch[args.memory_probe]()
        print(f"{before:.1f} {memory_mb('VmHWM'):.1f}")
        return
    where = torch.cuda.get_device_name() if x.is_cuda else f"threads {torch.get_num_threads()}"
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, {where}"
        f", N = {x.shape[0]}, batch {args.batch_size}, 784-400-50, --compile {args.compile}"
    )
    rows = []
    for algo in args.algos:
        for objective in args.objectives:
            epochs = epoch_functions(
                x, objective, args.batch_size, algo, args.e_steps, args.compile == "on"
            )
            rows.append((algo, objective, compare(epochs, args.repeats, f"{algo} {objective}")))
    print(
        "\n| algorithm | objective | pyro-vae s/epoch | hand-written, fused Adam s/epoch | "
        "median ratio | hand-written, default Adam s/epoch | median ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for algo, objective, r in rows:
        label = f"em (fixed, {args.e_steps} E-steps)" if algo == "em" else algo
        cells = [f"{r[LOOPS[0]]:.2f}"]
        for name in LOOPS[1:]:
            cells += [f"{r[name]:.2f}", f"{r[f'ratio to {name}']:.3f}"]
        print(f"| {label} | {objective} | " + " | ".join(cells) + " |")
    assert all(math.isfinite(v) for _, _, r in rows for v in r.values())
    if x.is_cuda:
        print_cuda_table(rows, x.shape[0])
        return
    probe_argv = [a for a in sys.argv[1:] if a not in ("--quick",)]
    if args.quick:
        probe_argv += ["--limit-train", str(x.shape[0])]
    print(
        f"\nresident memory, one epoch of {args.algos[0]} {args.objectives[0]} in a fresh process:"
    )
    for loop, (before, peak) in memory_by_loop(probe_argv).items():
        print(f"  {loop}: {before:.0f} MB before, peak {peak:.0f} MB ({peak - before:+.1f} MB)")


def print_cuda_table(rows: list, n: int) -> None:
    """Examples per second of every loop (median epoch), and the library's time as a multiple
    of each hand-written loop's (median of the per-epoch ratios)."""
    print("\n| algorithm | objective | loop | examples/s | pyro-vae time / this loop's |")
    print("| --- | --- | --- | --- | --- |")
    for algo, objective, r in rows:
        for loop in [k for k in r if not k.startswith("ratio")]:
            ratio = "1" if loop == LOOPS[0] else f"{r[f'ratio to {loop}']:.2f}"
            print(f"| {algo} | {objective} | {loop} | {n / r[loop]:,.0f} | {ratio} |")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
