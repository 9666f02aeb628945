"""The autoencoder family as Pyro programs: AE, sparse AE, denoising AE and VAE.

Losses against hand computations, corruption statistics, the clean target, PCA, and every model
through train / evaluate / plot / resume / compare on small data.
"""

import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_vae import (
    Autoencoder,
    Corruption,
    EMTrainer,
    GaussianLikelihood,
    MLPDecoder,
    MLPEncoder,
    SVITrainer,
    TrainConfig,
    UserError,
    build_vae,
    elbo_terms,
    fit,
    load_vae,
    make_objective,
)
from pyro_vae.cli.main import main
from pyro_vae.cli.posthoc import evaluate_run, plot_run
from pyro_vae.models.autoencoders import sparsity_kl
from pyro_vae.models.likelihoods import BernoulliLikelihood
from pyro_vae.runs.folder import Run

D, Z = 12, 3


def small_ae(likelihood=None, **kwargs) -> Autoencoder:
    likelihood = likelihood or BernoulliLikelihood()
    out = getattr(likelihood, "params_per_dim", 1) * D
    return Autoencoder(MLPEncoder(D, (8,), Z), MLPDecoder(Z, (8,), out), likelihood, Z, D, **kwargs)


def binary(n: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, D), 0.4), generator=torch.Generator().manual_seed(seed))


# --- the losses ---------------------------------------------------------------------------------


def test_ae_elbo_is_exactly_the_bernoulli_reconstruction_loss():
    ae, x = small_ae(), binary()
    loss = Trace_ELBO().differentiable_loss(ae.model, ae.guide, x)
    code = ae.encoder(x)[0]
    bce = F.binary_cross_entropy_with_logits(ae.decoder(code), x, reduction="sum")
    assert loss.item() == pytest.approx(bce.item(), rel=1e-6)


def test_ae_elbo_with_a_fixed_gaussian_is_squared_error_over_two_sigma_squared():
    sigma = 0.5
    ae, x = small_ae(GaussianLikelihood(D, f"fixed:{sigma}")), torch.rand(20, D)
    loss = Trace_ELBO().differentiable_loss(ae.model, ae.guide, x).item()
    mean = ae.decoder(ae.encoder(x)[0])
    squared = (x - mean).pow(2).sum().item()
    constant = x.numel() * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    assert loss == pytest.approx(squared / (2 * sigma**2) + constant, rel=1e-5)


def test_every_objective_trainer_sees_the_same_ae_loss():
    ae, x = small_ae(), binary()
    expected = Trace_ELBO().differentiable_loss(ae.model, ae.guide, x).item()
    for name, particles in (("trace", 1), ("trace", 3), ("iwae", 4)):
        got = make_objective(name, particles)(ae.model, ae.guide, x).item()
        assert got == pytest.approx(expected, rel=1e-5), name


def test_sparsity_penalty_matches_a_hand_computation():
    rho, beta = 0.1, 2.5
    ae, x = small_ae(sparsity=rho, sparsity_weight=beta), binary(16)
    codes = torch.sigmoid(ae.encoder(x)[0]).detach()
    kl = 0.0
    for j in range(Z):
        rho_hat = sum(codes[n, j].item() for n in range(len(x))) / len(x)
        kl += rho * math.log(rho / rho_hat) + (1 - rho) * math.log((1 - rho) / (1 - rho_hat))
    assert sparsity_kl(codes, rho).item() == pytest.approx(kl, rel=1e-5)
    loss = Trace_ELBO().differentiable_loss(ae.model, ae.guide, x).item()
    bce = F.binary_cross_entropy_with_logits(ae.decoder(codes), x, reduction="sum").item()
    # per data point: reconstruction + beta * KL, as in the UFLDL notes; the loss is a sum
    assert loss == pytest.approx(bce + len(x) * beta * kl, rel=1e-5)
    # evaluation keeps the penalty out of the reconstruction term
    terms = elbo_terms(ae, x)
    assert terms["recon"].sum().item() == pytest.approx(-bce, rel=1e-5)
    assert terms["kl"].abs().max().item() == 0.0
    assert ((codes > 0) & (codes < 1)).all()


def test_sparse_training_pulls_the_mean_activation_to_the_target():
    torch.manual_seed(0)
    ae, x = small_ae(sparsity=0.05, sparsity_weight=5.0), binary(200)
    before = ae.codes(x).mean(0)
    trainer = SVITrainer(ae, make_objective("trace"), lr=1e-2)
    for _ in range(40):
        trainer.train_epoch(x, batch_size=50)
    after = ae.codes(x).mean(0)
    assert (after - 0.05).abs().max() < 0.03 < (before - 0.05).abs().max()


#: How far from RHO every unit's mean activation on the test images may end after the real-data
#: training below (measured: 0.012 at RHO 0.05 on 20000 images for 3 epochs; docs/autoencoders.md)
SPARSITY_TOLERANCE = 0.02


def test_sparse_ae_reaches_its_target_on_real_mnist_at_the_default_weight(real_data_dir):
    """At the default --sparsity-weight every unit's mean activation ends within
    SPARSITY_TOLERANCE of RHO on real MNIST (the issue: weight 1 left units at 0.10-0.25)."""
    from pyro_vae import load_data
    from pyro_vae.models.autoencoders import SPARSITY_WEIGHT

    rho = 0.05
    data = load_data("mnist", str(real_data_dir), limit_train=20000, limit_test=2000)
    torch.manual_seed(0)
    ae = Autoencoder(
        MLPEncoder(784, (400,), 50),
        MLPDecoder(50, (400,), 784),
        BernoulliLikelihood(),
        50,
        784,
        sparsity=rho,
    )
    assert ae.sparsity_weight == SPARSITY_WEIGHT == TrainConfig().sparsity_weight
    before = ae.codes(data.test).mean(0)
    trainer = SVITrainer(ae, make_objective("trace"), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        trainer.train_epoch(data.train_epoch(g), 128, g)
    after = ae.eval().codes(data.test).mean(0)
    assert (after - rho).abs().max().item() < SPARSITY_TOLERANCE < (before - rho).abs().min()


# --- corruption -------------------------------------------------------------------------------


def test_corruption_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 250, generator=g)
    masked = Corruption("mask:0.3")(x, generator=g)
    changed = masked != x
    assert changed.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert (masked[changed] == 0).all() and torch.equal(masked[~changed], x[~changed])
    noisy = Corruption("gaussian:0.2")(x, generator=g)
    assert (noisy - x).var().item() == pytest.approx(0.04, rel=0.02)
    assert (noisy - x).mean().item() == pytest.approx(0.0, abs=0.002)
    salted = Corruption("salt-pepper:0.2")(x, generator=g)
    hit = salted != x
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert ((salted[hit] == 0) | (salted[hit] == 1)).all()
    assert (salted[hit] == 1).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(Corruption("mask:0")(x), x) and torch.equal(Corruption("gaussian:0")(x), x)


@pytest.mark.parametrize("spec", ["gaussian:0.3", "salt-pepper:0.2", "mask:0.5"])
def test_corruption_is_deterministic_under_a_seed_and_fresh_per_call(spec):
    x = torch.rand(50, D)
    corrupt = Corruption(spec)
    torch.manual_seed(3)
    first, second = corrupt(x), corrupt(x)
    torch.manual_seed(3)
    assert torch.equal(corrupt(x), first)
    assert not torch.equal(first, second)  # redrawn for every minibatch


@pytest.mark.parametrize(
    "spec", ["nope:0.1", "mask:1.5", "salt-pepper:-0.1", "gaussian:-1", "mask"]
)
def test_bad_corruption_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        Corruption(spec)


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_the_encoder_sees_the_corrupted_input_and_the_likelihood_the_clean_one(kind):
    if kind == "ae":
        model = small_ae(corruption=Corruption("mask:0.5"))
    else:
        model = build_vae(D, Z, (8,), corrupt="mask:0.5")
    seen = []
    model.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x = torch.ones(30, D)  # masked pixels are the zeros
    guide_tr = poutine.trace(model.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x)
    assert torch.equal(model_tr.nodes["x"]["value"], x)
    assert (seen[-1] == 0).float().mean().item() == pytest.approx(0.5, abs=0.1)
    model.eval()  # evaluation encodes the clean images
    poutine.trace(model.guide).get_trace(x)
    assert torch.equal(seen[-1], x)


# --- PCA ------------------------------------------------------------------------------------------


def test_linear_autoencoder_learns_the_pca_subspace():
    """Baldi and Hornik (1989): a linear AE under squared error (a fixed-scale Gaussian
    likelihood) reaches the best rank-k reconstruction, the PCA error."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g) @ torch.randn(3, 10, generator=g)
    x = x + 0.1 * torch.randn(512, 10, generator=g)
    x = x - x.mean(0)
    pca_error = torch.linalg.eigvalsh(x.T @ x / x.shape[0])[:-2].sum().item()
    lik = GaussianLikelihood(10, f"fixed:{0.5**0.5}")  # loss: squared error + const
    ae = Autoencoder(MLPEncoder(10, (), 2), MLPDecoder(2, (), 10), lik, z_dim=2, data_dim=10)

    def error() -> float:  # the Gaussian's mean (reconstruct() clamps it to images' [0, 1])
        with torch.no_grad():
            return (x - ae.decoder(ae.codes(x))).pow(2).sum(-1).mean().item()

    start = error()
    trainer = SVITrainer(ae, make_objective("trace"), lr=2e-2)
    history = [trainer.train_epoch(x, 128, g) for _ in range(80)]
    assert history[-1] < history[0] and start > 1.5 * pca_error
    assert error() == pytest.approx(pca_error, rel=0.05)


# --- trainers ------------------------------------------------------------------------------------


def test_em_on_the_autoencoder_freezes_each_side_bitwise():
    ae, x = small_ae(), binary(40)
    trainer = EMTrainer(ae, make_objective("trace"), e_rule="fixed", e_steps=3, e_lr=0.01)
    decoder = [p.detach().clone() for p in ae.model_parameters()]
    encoder = [p.detach().clone() for p in ae.guide_parameters()]
    trainer.e_step(x)
    assert all(torch.equal(p, s) for p, s in zip(ae.model_parameters(), decoder, strict=True))
    assert not all(torch.equal(p, s) for p, s in zip(ae.guide_parameters(), encoder, strict=True))
    encoder = [p.detach().clone() for p in ae.guide_parameters()]
    trainer.m_step(x)
    assert all(torch.equal(p, s) for p, s in zip(ae.guide_parameters(), encoder, strict=True))


# --- every model through the run system ---------------------------------------------------------

VARIANTS = {
    "ae": dict(model="ae"),
    "sparse-ae": dict(model="ae", sparsity=0.1, sparsity_weight=2.0),
    "denoising-ae": dict(model="ae", corrupt="salt-pepper:0.2"),
    "denoising-vae": dict(model="vae", corrupt="gaussian:0.3"),
}


def small_config(data_dir, out, **overrides) -> TrainConfig:
    settings = dict(
        data_dir=str(data_dir),
        out=str(out),
        epochs=2,
        batch_size=100,
        z_dim=4,
        hidden_dims=(32,),
        lr=3e-3,
        quiet=True,
        eval_every=1,
        eval_iw_samples=5,
        eval_limit=100,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_model_trains_evaluates_plots_and_resumes_exactly(fake_data_dir, tmp_path, variant):
    settings = VARIANTS[variant]
    straight = fit(small_config(fake_data_dir, tmp_path / "straight", epochs=3, **settings))
    fit(small_config(fake_data_dir, tmp_path / "resumed", **settings))
    pyro.clear_param_store()
    resumed = fit(_resume_config(fake_data_dir, tmp_path / "resumed"))
    a, b = Run(straight.path).load_checkpoint(), Run(resumed.path).load_checkpoint()
    for name, value in a["vae"].items():
        assert torch.equal(value, b["vae"][name]), name
    rows = resumed.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    model, config = load_vae(str(resumed.path))
    assert config.model == settings["model"]

    result = evaluate_run(resumed.path, iw_samples=5, limit=50)
    saved = json.loads((resumed.path / "eval.json").read_text())
    assert saved["num_test"] == 50 and "sq_error" in saved and "active_units" in saved
    if settings["model"] == "ae":
        assert not {"iwae", "elbo", "kl", "mutual_info"} & set(result)
        assert {"elbo", "log_likelihood", "mutual_info"} <= set(result["not_applicable"])
        assert math.isnan(rows[-1]["test_elbo"]) and math.isfinite(rows[-1]["test_recon"])
    else:
        assert {"iwae", "elbo", "kl", "mutual_info"} <= set(result)
    if "sparsity" in settings:
        assert len(result["mean_activation"]) == 4 and result["sparsity_target"] == 0.1
    if "corrupt" in settings:
        assert result["corruption"] == settings["corrupt"]
        assert math.isfinite(result["corrupted_sq_error"])

    names = {p.name for p in plot_run(resumed.path)}
    assert {"reconstructions.png", "random_codes.png", "latent.png", "curves.png"} <= names
    assert ("samples.png" in names) == (settings["model"] == "vae")
    assert ("denoising.png" in names) == ("corrupt" in settings)
    assert ("sparsity.png" in names) == ("sparsity" in settings)


def _resume_config(data_dir, run_dir) -> TrainConfig:
    from pyro_vae.runs.resume import resume_config

    requested = TrainConfig(epochs=3, resume=str(run_dir), data_dir=str(data_dir), quiet=True)
    return resume_config(requested, {"epochs", "data_dir", "quiet"})


@pytest.mark.slow
def test_compare_puts_the_autoencoder_and_the_vae_in_one_table(fake_data_dir, tmp_path, capsys):
    code = main(
        ["compare", "--models", "ae", "vae", "--algo", "svi", "--data-dir", str(fake_data_dir)]
        + ["--epochs", "1", "--z-dim", "2", "--hidden-dims", "16", "--quiet"]
        + ["--eval-every", "0", "--out", str(tmp_path / "cmp")]
    )
    assert code == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    header, _, *rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()]
    table_rows = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    ae, vae = table_rows["ae-svi"], table_rows["svi"]
    for column in ("test_elbo", "test_kl", "test_iwae_50", "mutual_info"):
        assert ae[column] == "n/a" and float(vae[column]) == float(vae[column])
    for column in ("test_recon", "recon_at_code", "sq_error", "active_units"):
        assert float(ae[column]) == float(ae[column]) and float(vae[column]) == float(vae[column])
    assert (tmp_path / "cmp" / "comparison.png").is_file()


# --- bad input --------------------------------------------------------------------------------

BAD = [
    (["--model", "ae", "--prior", "vamp:50"], "--prior vamp:50 does not apply to --model ae"),
    (["--model", "ae", "--beta", "2"], "--beta does not apply to --model ae"),
    (["--model", "ae", "--elbo", "iwae"], "use --elbo trace"),
    (["--model", "ae", "--algo", "mcem"], "--algo mcem does not apply to --model ae"),
    (["--model", "ae", "--algo", "em", "--e-rule", "aggressive", "--val-size", "10"], "mutual"),
    (["--model", "vae", "--sparsity", "0.1"], "--sparsity applies to --model ae"),
    (["--algo", "mcem", "--corrupt", "mask:0.5"], "--algo mcem trains no guide"),
    (["--model", "gan"], "unknown model 'gan'"),
    (["--corrupt", "blur:0.1"], "unknown corruption 'blur'"),
    (["--corrupt", "mask:1.5"], "probability P in [0, 1]"),
    (["--corrupt", "salt-pepper:-0.1"], "probability P in [0, 1]"),
    (["--corrupt", "gaussian:-1"], "SIGMA >= 0"),
    (["--corrupt", "gaussian:x"], "bad corruption"),
    (["--model", "ae", "--sparsity", "1.5"], "'1.5' is not a number in (0, 1)"),
    (["--model", "ae", "--sparsity", "0"], "'0' is not a number in (0, 1)"),
    (["--model", "ae", "--sparsity-weight", "3"], "--sparsity-weight weighs the penalty"),
]


@pytest.mark.parametrize("flags, message", BAD)
def test_bad_model_flags_give_one_line_and_exit_2(capsys, fake_data_dir, tmp_path, flags, message):
    argv = ["train", *flags, "--data-dir", str(fake_data_dir), "--quiet", "--out", str(tmp_path)]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "config.json").exists()
