"""Every command on a CUDA GPU: train (SVI, EM, MCEM) for every model, evaluate, plot, compare,
fit-prior, resume on the GPU and across CPU and GPU, and torchrun with NCCL.

Marked ``cuda`` and skipped where torch sees no GPU (``pytest -m cuda`` on a GPU machine runs
only these). Runs are tiny (fake MNIST, 1-2 epochs): they check that every path puts its tensors
on the right device and that the numbers are finite, not that the GPU is fast
(``benchmarks/bench_training.py --device cuda`` measures that).
"""

import json
import math
from pathlib import Path

import pytest
import torch
from test_distributed import launch

from pyro_vae.cli.main import main
from pyro_vae.runs.folder import Run

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda)"),
]

TINY = ["--limit-train", "100", "--limit-test", "20", "--z-dim", "2", "--hidden-dims", "16"]
TINY += ["--eval-every", "1", "--eval-iw-samples", "5", "--quiet"]

MODELS = {
    "vae-svi": [],
    "vae-em": ["--algo", "em", "--e-steps", "2"],
    "vae-mcem": ["--algo", "mcem", "--mc-warmup", "3", "--mc-samples", "2"]
    + ["--mc-eval-warmup", "3", "--mc-eval-samples", "3", "--batch-size", "20"],
    "vae-iwae-vamp": ["--elbo", "iwae", "--num-particles", "3", "--prior", "vamp:4"],
    "vae-flow-conv-gaussian": ["--prior", "flow:2", "--arch", "conv", "--likelihood", "gaussian"]
    + ["--binarize", "none"],
    "vae-mog-denoising": ["--prior", "mog:3", "--corrupt", "mask:0.3", "--kl-warmup", "1"],
    "ae-sparse": ["--model", "ae", "--sparsity", "0.05"],
    "vqvae": ["--model", "vqvae", "--codebook-size", "8", "--code-dim", "4"],
    "tdvae": ["--model", "tdvae", "--dataset", "moving-mnist", "--seq-len", "6", "--max-jump", "2"],
}


def train(data_dir: Path, out: Path, *flags: str, epochs: int = 1, device: str = "cuda") -> Run:
    argv = ["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", str(epochs)]
    assert main([*argv, *TINY, "--device", device, *flags]) == 0
    return Run(out)


def assert_finite_metrics(run: Run) -> None:
    last = run.read_metrics()[-1]
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["test_recon"])


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_evaluates_and_plots_on_the_gpu(name, fake_data_dir, tmp_path):
    run = train(fake_data_dir, tmp_path / name, *MODELS[name])
    assert_finite_metrics(run)
    state = run.load_checkpoint()  # saved tensors load on a machine without a GPU
    assert all(t.device.type == "cpu" for t in state["vae"].values())
    assert (
        main(["evaluate", str(run.path), "--iw-samples", "4", "--device", "cuda", "--quiet"]) == 0
    )
    result = json.loads((run.path / "eval.json").read_text())
    numbers = [v for v in result.values() if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert main(["plot", str(run.path), "--device", "cuda"]) == 0
    assert (run.path / "figures" / "curves.png").is_file()


def test_fit_prior_on_the_gpu(fake_data_dir, tmp_path):
    run = train(fake_data_dir, tmp_path / "vq", *MODELS["vqvae"])
    argv = ["fit-prior", str(run.path), "--prior", "categorical", "transformer:1"]
    assert main([*argv, "--epochs", "1", "--device", "cuda", "--quiet"]) == 0
    record = json.loads((run.path / "priors" / "transformer-1" / "eval.json").read_text())
    assert math.isfinite(record["test_bound"])


def test_compare_on_the_gpu(fake_data_dir, tmp_path):
    argv = ["compare", "--algo", "svi", "em", "--data-dir", str(fake_data_dir)]
    argv += ["--out", str(tmp_path / "cmp"), "--epochs", "1", "--e-steps", "2"]
    assert main([*argv, *TINY, "--device", "cuda"]) == 0


def test_resume_on_the_gpu_is_bitwise_exact(fake_data_dir, tmp_path):
    straight = train(fake_data_dir, tmp_path / "straight", epochs=2)
    train(fake_data_dir, tmp_path / "resumed", epochs=1)
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--epochs", "2"]) == 0
    a, b = straight.load_checkpoint(), Run(tmp_path / "resumed").load_checkpoint()
    for name, value in a["vae"].items():
        assert torch.equal(value, b["vae"][name]), name


@pytest.mark.parametrize("first, then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_run_resumes_on_the_other_device(first, then, fake_data_dir, tmp_path):
    run = train(fake_data_dir, tmp_path / "run", "--algo", "em", "--e-steps", "2", device=first)
    argv = ["train", "--resume", str(run.path), "--epochs", "2", "--device", then, "--quiet"]
    assert main(argv) == 0
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    assert_finite_metrics(run)


def test_torchrun_with_nccl_on_one_gpu(fake_data_dir, tmp_path):
    out = tmp_path / "ddp"
    args = ["-m", "pyro_vae", "train", "--data-dir", str(fake_data_dir), "--out", str(out)]
    done = launch([*args, "--epochs", "2", *TINY, "--device", "cuda"], nproc=1)
    assert done.returncode == 0, done.stderr[-3000:]
    state = Run(out).load_checkpoint()
    assert state["epoch"] == 2 and done.stdout.count("run folder") == 1
    assert_finite_metrics(Run(out))


def test_cpu_and_gpu_models_agree_on_a_deterministic_pass(fake_data_dir, tmp_path):
    """The same trained parameters give the same reconstructions (encoder mean, decoder mean)
    on both devices, to float32 rounding."""
    from pyro_vae import load_vae

    run = train(fake_data_dir, tmp_path / "run")
    x = torch.rand(8, 784).round()
    cpu, _ = load_vae(str(run.path), device="cpu")
    gpu, _ = load_vae(str(run.path), device="cuda")
    with torch.no_grad():
        a = cpu.decode_mean(cpu.codes(x))
        b = gpu.decode_mean(gpu.codes(x.cuda())).cpu()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
