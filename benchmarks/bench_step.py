"""Where pyro-vae's SVI step spends its time, against a hand-written PyTorch step.

Part 1 (levers): median milliseconds of one training step (forward, backward, Adam) on the
default 784-400-50 VAE, for the hand-written loop and the library as shipped, and for the
library with one speed lever undone at a time. Part 2 (Pyro's fixed cost): the same step on a
tiny network (784-8-2, batch 4) where the tensor work is negligible, split into the phases of
``Trace_ELBO.differentiable_loss`` (trace the guide, replay and trace the model, log-densities
and the loss) against the same computation written by hand.

All variants run interleaved (round-robin, ``--rounds`` rounds of ``--steps`` steps each) on
one random binary minibatch; timing does not depend on the pixel values.

    python benchmarks/bench_step.py                 # about 2 minutes
    python benchmarks/bench_step.py --threads 1
    python benchmarks/bench_step.py --torch-compile aot_eager   # also torch.compile the loss
    python benchmarks/bench_step.py --jit                       # also Pyro's JIT ELBOs
    python benchmarks/bench_step.py --particles 10   # also K particles, vectorized or one by one
"""

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from bench_training import hand_written_loss
from pyro import poutine
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import SVITrainer, build_vae, make_objective
from pyro_vae.models.likelihoods import BernoulliLikelihood


class TorchBernoulli(BernoulliLikelihood):
    """The likelihood as it was: torch's Bernoulli(logits).to_event(1)."""

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=logits).to_event(1)


def median_ms(cases: dict[str, Callable[[], object]], rounds: int, steps: int) -> dict:
    """Median over rounds of the milliseconds per call, the cases interleaved in each round."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def step_cases(
    objective: str,
    x: torch.Tensor,
    hidden: int,
    z_dim: int,
    compile_backend: str = "",
    jit: bool = False,
    particles: int = 1,
) -> dict:
    """One training step each: hand-written (default and fused Adam), the library as shipped,
    and the library with validation on, torch's Bernoulli, or torch's default Adam; with
    ``compile_backend``, also with the Pyro loss under ``torch.compile``, with ``jit`` also
    with Pyro's JIT-traced ELBO; with ``particles`` > 1 also with that many particles, vectorized
    (the library's choice) and traced one by one."""
    torch.manual_seed(0)
    vae = build_vae(x.shape[1], z_dim=z_dim, hidden_dims=(hidden,))
    encoder, decoder = copy.deepcopy(vae.encoder), copy.deepcopy(vae.decoder)

    def groups() -> list[dict]:  # fresh dicts: an optimizer writes its defaults into them
        return [{"params": list(encoder.parameters())}, {"params": list(decoder.parameters())}]

    default_adam = torch.optim.Adam(groups(), lr=1e-3)
    fused_adam = torch.optim.Adam(groups(), lr=1e-3, fused=True)
    analytic = objective == "meanfield"

    def hand(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        def step() -> None:
            loss = hand_written_loss(encoder, decoder, x, analytic)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    def library(validate: bool = False, **change) -> Callable[[], object]:
        copy_ = copy.deepcopy(vae)
        if change.get("likelihood") == "torch":
            copy_.likelihood = TorchBernoulli()
        loss = make_objective(objective)
        if change.get("particles"):  # vectorized: the library's own K-particle objective
            loss = make_objective(objective, change["particles"])
            if not change["vectorize"]:
                elbo = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}[objective]
                loss = elbo(num_particles=change["particles"], max_plate_nesting=1)
                loss = loss.differentiable_loss
        if change.get("jit"):  # Pyro's JIT traces tensor arguments only: kl_weight stays 1
            jit_elbo = {"trace": JitTrace_ELBO, "meanfield": JitTraceMeanField_ELBO}[objective]
            jit_loss = jit_elbo(max_plate_nesting=1, ignore_jit_warnings=True).differentiable_loss

            def loss(model, guide, x, kl_weight=1.0):
                return jit_loss(model, guide, x)

        if change.get("compile"):
            loss = torch.compile(loss, backend=change["compile"])
        trainer = SVITrainer(copy_, loss, lr=1e-3, compile=change.get("compiled", False))
        if change.get("adam") == "default":
            plain = [{"params": g["params"]} for g in trainer.optimizer.param_groups]
            trainer.optimizer = torch.optim.Adam(plain, lr=1e-3)

        def step() -> object:
            with pyro.validation_enabled(validate):
                return trainer.step(x)

        if change.get("jit"):  # compile now, while Pyro's param store holds this copy's params
            pyro.clear_param_store()
            step()
        if change.get("compiled"):  # trace and compile now, outside the timed rounds
            step()
            assert trainer.compiled.reason is None, trainer.compiled.reason
        return step

    cases = {
        "hand-written, torch's default Adam": hand(default_adam),
        "hand-written, fused Adam": hand(fused_adam),
        "pyro-vae as shipped": library(),
        "pyro-vae, compiled step (--compile on)": library(compiled=True),
        "pyro-vae, Pyro validation on": library(validate=True),
        "pyro-vae, torch's Bernoulli(logits).to_event(1)": library(likelihood="torch"),
        "pyro-vae, torch's default Adam": library(adam="default"),
    }
    if jit:
        cases["pyro-vae, Pyro's JitTrace*_ELBO"] = library(jit=True)
    if particles > 1:
        for vectorize, how in ((True, "vectorized"), (False, "one trace each")):
            cases[f"pyro-vae, {particles} particles, {how}"] = library(
                particles=particles, vectorize=vectorize
            )
    if compile_backend:
        cases[f"pyro-vae, loss under torch.compile({compile_backend})"] = library(
            compile=compile_backend
        )
    return cases


def phase_cases(objective: str, x: torch.Tensor) -> dict:
    """The forward pass of one step on a tiny network, whole and by phase, by Pyro and by hand."""
    torch.manual_seed(0)
    vae = build_vae(x.shape[1], z_dim=2, hidden_dims=(8,))
    loss_fn = make_objective(objective)
    analytic = objective == "meanfield"

    def guide_trace() -> poutine.Trace:
        return poutine.trace(vae.guide).get_trace(x)

    guide = guide_trace()

    def model_trace() -> poutine.Trace:
        return poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)

    def modules() -> None:
        with poutine.trace():
            for name in ("encoder", "decoder"):
                pyro.module(name, getattr(vae, name))

    return {
        "hand-written loss": lambda: hand_written_loss(vae.encoder, vae.decoder, x, analytic),
        "pyro-vae loss (differentiable_loss)": lambda: loss_fn(vae.model, vae.guide, x),
        "  trace the guide": guide_trace,
        "  replay and trace the model": model_trace,
        "  of which pyro.module registrations": modules,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["meanfield", "trace"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--torch-compile",
        metavar="BACKEND",
        default="",
        help="also time the library with its loss under torch.compile(backend=BACKEND)",
    )
    parser.add_argument("--jit", action="store_true", help="also time Pyro's JitTrace*_ELBO")
    parser.add_argument(
        "--particles",
        metavar="K",
        type=int,
        default=1,
        help="also time K particles per data point, vectorized and traced one by one",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}")
    pyro.enable_validation(False)
    x = torch.bernoulli(torch.full((args.batch_size, 784), 0.13))
    tiny_x = x[:4]
    for objective in args.objectives:
        print(f"\n## {objective}: ms per step, 784-400-50, batch {args.batch_size}")
        cases = step_cases(objective, x, 400, 50, args.torch_compile, args.jit, args.particles)
        result = median_ms(cases, args.rounds, args.steps)
        reference = result["hand-written, fused Adam"]
        print("| variant | ms/step | / hand-written (fused Adam) |\n| --- | --- | --- |")
        for name, ms in result.items():
            print(f"| {name} | {ms:.2f} | {ms / reference:.3f} |")

        print(f"\n## {objective}: Pyro's fixed cost, 784-8-2, batch 4 (ms per call)")
        tiny = median_ms(step_cases(objective, tiny_x, 8, 2), args.rounds, 10 * args.steps)
        phase_ms = median_ms(phase_cases(objective, tiny_x), args.rounds, 10 * args.steps)
        print("| what | ms |\n| --- | --- |")
        for name in list(tiny)[:4]:  # hand-written (two Adams), as shipped, compiled
            print(f"| step: {name} | {tiny[name]:.3f} |")
        compiled = tiny["pyro-vae, compiled step (--compile on)"]
        for name in list(tiny)[:2]:
            ratio = compiled / tiny[name]
            print(f"| compiled step / hand-written step ({name[14:]}) | {ratio:.3f} |")
        for name, ms in phase_ms.items():
            print(f"| {name} | {ms:.3f} |")
        print(
            f"| Pyro's overhead per step (library - hand-written step) | "
            f"{tiny['pyro-vae as shipped'] - tiny['hand-written, fused Adam']:.3f} |"
        )


if __name__ == "__main__":
    main()
