"""The VQ-VAE and the priors over its codes.

Quantization against brute force, the straight-through gradient, the loss against a hand
computation (and which of its terms are ELBO terms), the EMA update and dead-code restarts by
hand, the code priors' causality, normalisation and sampling, EM's frozen sides, stage 2 as the
prior's M-step, and the run system end to end.
"""

import functools
import itertools
import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_vae import (
    VQVAE,
    CategoricalCodePrior,
    Codebook,
    EMTrainer,
    SVITrainer,
    TrainConfig,
    TransformerCodePrior,
    UniformCodePrior,
    UserError,
    elbo_terms,
    fit,
    fit_code_prior,
    load_code_prior,
    make_objective,
)
from pyro_vae.cli.main import main
from pyro_vae.cli.posthoc import evaluate_run, plot_run
from pyro_vae.models.code_priors import tempered
from pyro_vae.models.codebook import ema_update, nearest_code
from pyro_vae.models.likelihoods import BernoulliLikelihood
from pyro_vae.models.networks import GridMLPDecoder, GridMLPEncoder
from pyro_vae.runs.folder import Run

D, G, C, K = 12, 3, 2, 4  # data dim, grid positions, code dim, codebook size


def small_vq(update: str = "loss", prior=None, **kwargs) -> VQVAE:
    return VQVAE(
        GridMLPEncoder(D, (8,), G, C),
        GridMLPDecoder(G, C, (8,), D),
        BernoulliLikelihood(),
        Codebook(K, C, update),
        G,
        prior=prior,
        data_dim=D,
        **kwargs,
    )


def binary(n: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, D), 0.4), generator=torch.Generator().manual_seed(seed))


# --- quantization and the straight-through estimator -----------------------------------------


def test_quantization_picks_the_nearest_code_against_brute_force():
    z, codes = torch.randn(50, 3, 5), torch.randn(9, 5)
    brute = torch.tensor(
        [[min(range(9), key=lambda j: (v - codes[j]).norm().item()) for v in row] for row in z]
    )
    assert torch.equal(nearest_code(z, codes), brute)


def capture_encoder_output(model: VQVAE) -> dict:
    out = {}
    model.encoder.register_forward_hook(lambda m, i, o: out.__setitem__("z_e", o))
    return out


def test_straight_through_passes_the_decoders_gradient_to_the_encoder_unchanged():
    vq, x = small_vq(), binary()
    captured = capture_encoder_output(vq)
    guide = poutine.trace(vq.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vq.model, trace=guide)).get_trace(x)
    z = guide.nodes["z"]["value"]
    z_e = captured["z_e"]
    assert torch.equal(z, vq.codebook.lookup(vq.codebook.nearest(z_e)))  # the code, bit for bit
    log_px = model.nodes["x"]["fn"].log_prob(x).sum()
    grad_z_e, grad_z = torch.autograd.grad(log_px, [z_e, z])
    assert torch.equal(grad_z_e, grad_z) and grad_z.abs().sum() > 0


def test_the_loss_is_the_bound_plus_commitment_and_codebook_losses_and_only_the_bound_is_reported():
    vq, x = small_vq(commitment=0.25), binary()
    torch.manual_seed(0)
    loss = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    z_e = vq.encoder(x)
    e_k = vq.codebook.lookup(vq.codebook.nearest(z_e))
    log_px = vq.likelihood(vq.decoder(e_k)).log_prob(x).sum()
    log_pk = -x.shape[0] * G * math.log(K)  # uniform prior
    squared = (z_e - e_k).pow(2).sum()
    expected = -(log_px + log_pk) + 0.25 * squared + squared
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    terms = elbo_terms(vq.eval(), x)
    assert terms["elbo"].sum().item() == pytest.approx((log_px + log_pk).item(), rel=1e-5)
    assert torch.allclose(terms["kl"], torch.full((len(x),), G * math.log(K)))


# --- the codebook's updates ------------------------------------------------------------------


def test_ema_update_matches_a_hand_computation():
    count, total = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([[0.0], [1.0], [2.0]])
    assigned, summed = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([[1.0], [0.0], [4.0]])
    codes = ema_update(count, total, assigned, summed, decay=0.5, eps=0.0)
    # N = 0.5 * 1 + 0.5 * n = [1.5, 0.5, 1.0]; m = 0.5 * m + 0.5 * s = [0.5, 0.5, 3.0]
    assert torch.allclose(count, torch.tensor([1.5, 0.5, 1.0]))
    assert torch.allclose(codes, torch.tensor([[0.5 / 1.5], [1.0], [3.0]]))
    smoothed = ema_update(count.clone(), total.clone(), assigned, summed, decay=0.5, eps=0.1)
    n = 1.75 + 0.25 + 1.0  # counts after a second step: [1.75, 0.25, 1.0]
    laplace = (torch.tensor([1.75, 0.25, 1.0]) + 0.1) / (n + 0.3) * n
    m = torch.tensor([0.5 * 0.5 + 0.5, 0.25, 1.5 + 2.0])
    assert torch.allclose(smoothed.squeeze(1), m / laplace)


def test_the_codebook_ema_step_uses_the_minibatch_assignments():
    book = Codebook(3, 1, "ema", decay=0.5)
    book.vectors.copy_(torch.tensor([[0.0], [1.0], [2.0]]))
    book.ema_total.copy_(book.vectors)
    z_e = torch.tensor([[0.1], [-0.1], [2.5], [1.9]])
    book.after_model_update(z_e, book.nearest(z_e), restart=False)
    # code 0: (0.5*0 + 0.5*0.0) / (0.5 + 1) = 0; code 1 unused stays 1; code 2: (1 + 2.2) / 1.5
    expected = torch.tensor([[0.0], [1.0], [3.2 / 1.5]])
    assert torch.allclose(book.vectors, expected, atol=1e-4)


def test_dead_codes_restart_at_encoder_outputs():
    torch.manual_seed(0)
    book = Codebook(4, 2, "loss")
    z_e = torch.randn(30, 2) + 5.0  # far from every initial code
    k = book.nearest(z_e)
    restarted = book.after_model_update(z_e, k)
    assert restarted == 3  # the first update places the three unchosen codes on encoder outputs
    for j in range(4):
        if j != int(k[0]):
            assert (book.vectors[j] == z_e).all(1).any()
    assert Codebook(4, 2, "loss").after_model_update(z_e, k, restart=False) == 0
    # a code no vector chooses decays below the threshold and is restarted again
    book.after_model_update(z_e, torch.zeros(30, dtype=torch.long))
    unused = [book.after_model_update(z_e, torch.zeros(30, dtype=torch.long)) for _ in range(500)]
    assert sum(unused) >= 3


# --- code priors ----------------------------------------------------------------------------


def test_the_transformer_prior_is_causal():
    prior = TransformerCodePrior(5, 6, num_layers=2, width=16, heads=2)
    k = torch.randint(5, (3, 6))
    base = prior.logits(k)
    for i in range(6):
        changed = k.clone()
        changed[:, i:] = (changed[:, i:] + 1) % 5
        assert torch.allclose(prior.logits(changed)[:, : i + 1], base[:, : i + 1], atol=1e-6)
        if i + 1 < 6:
            assert not torch.allclose(prior.logits(changed)[:, i + 1 :], base[:, i + 1 :])


def all_grids(num_codes: int, positions: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(num_codes), repeat=positions)))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("kind", ["uniform", "categorical", "transformer"])
def test_code_priors_normalise_on_a_tiny_grid(kind, temperature):
    prior = {
        "uniform": lambda: UniformCodePrior(3, 3),
        "categorical": lambda: CategoricalCodePrior(3, 3),
        "transformer": lambda: TransformerCodePrior(3, 3, num_layers=1, width=8, heads=2),
    }[kind]()
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p))
        total = torch.logsumexp(tempered(prior, temperature).log_prob(all_grids(3, 3)), 0)
    assert total.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_ancestral_samples_have_the_frequencies_log_prob_gives(temperature):
    prior = TransformerCodePrior(2, 3, num_layers=1, width=8, heads=2)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p))
    grids = all_grids(2, 3)
    probs = prior(temperature).log_prob(grids).exp().detach()
    samples = prior(temperature).sample((20000,))
    index = (samples * torch.tensor([4, 2, 1])).sum(-1)
    freq = torch.bincount(index, minlength=8).double() / len(samples)
    assert (freq - probs.double()).abs().max() < 0.015


def test_a_temperature_raises_each_conditional_to_the_power_one_over_t():
    """Categorical: pi_T proportional to pi^(1/T); transformer: each conditional likewise, so at
    T -> 0 ancestral sampling is greedy and T = 1 is the fitted prior itself."""
    prior = CategoricalCodePrior(4, 2)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(2, 4))
    pi = prior.logits.softmax(-1)
    expected = (pi**2 / (pi**2).sum(-1, keepdim=True)).log()
    assert torch.allclose(prior(0.5).base_dist.logits, expected, atol=1e-6)
    transformer = TransformerCodePrior(3, 4, num_layers=1, width=8, heads=2)
    k = torch.randint(3, (5, 4))
    assert torch.equal(tempered(transformer, 1.0).log_prob(k), transformer().log_prob(k))
    greedy = transformer(1e-4).sample((3,))
    for i in range(4):  # every draw is the argmax of its conditional
        assert torch.equal(greedy[:, i], transformer.logits(greedy)[:, i].argmax(-1))


def test_a_prefix_gives_the_transformers_logits_of_the_whole_grid():
    prior = TransformerCodePrior(5, 6, num_layers=2, width=16, heads=2)
    k = torch.randint(5, (3, 6))
    for length in range(1, 7):
        assert torch.allclose(prior.logits(k[:, :length]), prior.logits(k)[:, :length], atol=1e-6)


def test_temperatures_a_prior_cannot_take_are_clear_errors():
    class NoTemperature(torch.nn.Module):
        def forward(self):
            return UniformCodePrior(3, 2)()

    assert tempered(NoTemperature(), 1.0).event_shape == (2,)
    with pytest.raises(UserError, match="takes no temperature"):
        tempered(NoTemperature(), 0.5)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(UserError, match="positive number"):
            tempered(TransformerCodePrior(3, 2, num_layers=1, width=8, heads=2), bad)


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_em_on_the_vqvae_freezes_each_side_bitwise(update):
    vq, x = small_vq(update), binary(40)
    trainer = EMTrainer(vq, make_objective("trace"), e_rule="fixed", e_steps=3)
    model_side = {k: v.clone() for k, v in vq.state_dict().items() if not k.startswith("encoder")}
    encoder = {k: v.clone() for k, v in vq.encoder.state_dict().items()}
    trainer.e_step(x)
    for name, value in vq.state_dict().items():
        if name in model_side:
            assert torch.equal(value, model_side[name]), name
    assert any(not torch.equal(v, encoder[k]) for k, v in vq.encoder.state_dict().items())
    encoder = {k: v.clone() for k, v in vq.encoder.state_dict().items()}
    trainer.m_step(x)
    for name, value in vq.encoder.state_dict().items():
        assert torch.equal(value, encoder[name]), name
    assert not torch.equal(vq.codebook.vectors, model_side["codebook.vectors"])


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_svi_training_raises_the_bound(update):
    torch.manual_seed(1)
    vq, x = small_vq(update), binary(200)
    before = elbo_terms(vq.eval(), x)["elbo"].mean().item()
    trainer = SVITrainer(vq, make_objective("trace"), lr=1e-2)
    for _ in range(15):
        trainer.train_epoch(x, 20, check=False)
    assert elbo_terms(vq.eval(), x)["elbo"].mean().item() > before + 1.0


def test_stage_two_is_the_m_step_of_the_bound_in_the_prior_alone():
    prior = CategoricalCodePrior(K, G)
    with torch.no_grad():
        prior.logits.normal_()
    vq, x = small_vq(prior=prior), binary()
    loss = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    (pyro_grad,) = torch.autograd.grad(loss, [prior.logits])
    code_nll = -prior().log_prob(vq.code_indices(x)).sum()
    (ml_grad,) = torch.autograd.grad(code_nll, [prior.logits])
    assert torch.allclose(pyro_grad, ml_grad, atol=1e-6)


# --- the run system -------------------------------------------------------------------------


def vq_config(data_dir, out, **kwargs) -> TrainConfig:
    settings = dict(
        model="vqvae",
        arch="conv",
        codebook_size=16,
        code_dim=4,
        data_dir=str(data_dir),
        limit_train=200,
        limit_test=60,
        batch_size=50,
        epochs=2,
        eval_every=1,
        out=str(out),
        quiet=True,
    )
    return TrainConfig(**(settings | kwargs))


@pytest.mark.slow
def test_vqvae_trains_resumes_evaluates_plots_and_fits_priors(fake_data_dir, tmp_path, capsys):
    straight = fit(vq_config(fake_data_dir, tmp_path / "straight", epochs=3))
    fit(vq_config(fake_data_dir, tmp_path / "resumed", codebook_update="loss"))
    pyro.clear_param_store()
    resumed = fit(
        vq_config(fake_data_dir, tmp_path / "resumed", epochs=3, resume=str(tmp_path / "resumed"))
    )
    a, b = Run(straight.path).load_checkpoint(), Run(resumed.path).load_checkpoint()
    for name, value in a["vae"].items():
        assert torch.equal(value, b["vae"][name]), name
    rows = resumed.read_metrics()
    assert rows[-1]["codes_used"] >= 1 and rows[-1]["perplexity"] >= 1
    assert rows[-1]["test_kl"] == pytest.approx(49 * math.log(16), rel=1e-5)

    result = evaluate_run(resumed.path, iw_samples=3, limit=40)
    assert {"elbo", "recon_at_code", "codes_used", "perplexity"} <= set(result)
    assert {"log_likelihood", "active_units", "mutual_info"} <= set(result["not_applicable"])
    names = {p.name for p in plot_run(resumed.path)}
    assert names == {"reconstructions.png", "samples.png", "codebook_usage.png", "curves.png"}

    argv = ["fit-prior", str(resumed.path), "--prior", "uniform", "categorical", "transformer:1"]
    assert main(argv + ["--epochs", "2", "--quiet"]) == 0
    table = capsys.readouterr().out
    bounds = {}
    for name in ("uniform", "categorical", "transformer-1"):
        folder = resumed.path / "priors" / name
        assert {p.name for p in folder.iterdir()} >= {"prior.pt", "eval.json", "samples.png"}
        record = json.loads((folder / "eval.json").read_text())
        bounds[name] = record["test_bound"]
        assert f"| {name} |" in table
    uniform = json.loads((resumed.path / "priors" / "uniform" / "eval.json").read_text())
    assert uniform["test_code_nll"] == pytest.approx(49 * math.log(16), rel=1e-5)
    assert bounds["categorical"] > bounds["uniform"]  # fitted by maximum likelihood
    assert main(["evaluate", str(resumed.path), "--iw-samples", "2", "--limit", "20"]) == 0
    printed = capsys.readouterr().out
    assert "codes used, perplexity" in printed and "| transformer-1 |" in printed
    prior = load_code_prior(resumed.path, "transformer-1")
    assert isinstance(prior, TransformerCodePrior) and len(prior.body.layers) == 1


BAD = [
    (["--model", "vqvae", "--codebook-size", "1"], "--codebook-size must be at least 2"),
    (["--model", "vqvae", "--code-dim", "0"], "--code-dim must be at least 1"),
    (["--model", "vae", "--codebook-size", "8"], "--codebook-size applies to --model vqvae"),
    (["--model", "vqvae", "--prior", "mog:3"], "pyro-vae fit-prior"),
    (["--model", "vqvae", "--beta", "2"], "--beta does not apply to --model vqvae"),
    (["--model", "vqvae", "--algo", "mcem"], "--algo mcem does not apply to --model vqvae"),
    (["--model", "vqvae", "--commitment", "-1"], "is not a non-negative number"),
    (["--model", "vqvae", "--codebook-update", "kmeans"], "invalid choice: 'kmeans'"),
]


def run_main(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("flags, message", BAD)
def test_bad_vqvae_flags_give_one_line_and_exit_2(capsys, fake_data_dir, tmp_path, flags, message):
    argv = ["train", *flags, "--data-dir", str(fake_data_dir), "--quiet", "--out", str(tmp_path)]
    code = run_main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "config.json").exists()


def test_fit_prior_refuses_a_run_that_is_not_a_vqvae_and_unknown_priors(
    capsys, fake_data_dir, tmp_path
):
    run = fit(
        vq_config(
            fake_data_dir,
            tmp_path / "vae",
            model="vae",
            arch="mlp",
            epochs=1,
            codebook_size=512,
            code_dim=64,
            z_dim=2,
            hidden_dims=(8,),
            eval_every=0,
        )
    )
    capsys.readouterr()
    cases = [
        (["fit-prior", str(run.path)], "fit-prior needs a VQ-VAE run"),
        (["fit-prior", str(run.path), "--prior", "pixelsnail"], "unknown prior 'pixelsnail'"),
        (["fit-prior", str(tmp_path / "none")], "does not exist"),
    ]
    for argv, message in cases:
        code = run_main(argv + ["--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (run.path / "priors").exists()


def test_compare_gives_each_model_only_the_flags_of_its_own():
    from pyro_vae.cli.compare import compare_configs
    from pyro_vae.cli.main import compare_parser

    args = compare_parser().parse_args(
        ["--models", "vqvae", "vae", "--algo", "svi", "--codebook-size", "16"]
    )
    vq, vae = compare_configs(args)
    assert vq.codebook_size == 16 and vae.codebook_size == TrainConfig().codebook_size
    vq.validate(), vae.validate()


def test_the_model_scores_the_guides_codes_without_a_second_search(monkeypatch):
    from pyro_vae.models import codebook as codebook_module

    vq, x = small_vq(prior=CategoricalCodePrior(K, G)), binary()
    searches = []
    real = codebook_module.nearest_code
    monkeypatch.setattr(
        codebook_module, "nearest_code", lambda z, c: searches.append(1) or real(z, c)
    )
    torch.manual_seed(0)
    cached = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    assert len(searches) == 1  # the guide's; the model reuses its indices
    monkeypatch.setattr(vq.codebook, "remember", lambda vectors, indices: None)
    torch.manual_seed(0)
    searched = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    assert len(searches) == 3 and cached.item() == searched.item()


# --- stage 2: closed forms, checkpoints, progress, shared codes, loading, pictures -------------


def test_the_categorical_prior_in_closed_form_is_the_smoothed_empirical_frequencies():
    g = torch.Generator().manual_seed(0)
    grids = torch.multinomial(torch.tensor([0.6, 0.3, 0.1, 0.0]), 300, True, generator=g)
    grids = torch.stack([grids, grids.flip(0), torch.full_like(grids, 2)], 1)  # (300, G = 3)
    for smoothing in (0.0, 0.5, 1.0):
        prior = CategoricalCodePrior(K, G, smoothing=smoothing)
        prior.fit_exact(grids)
        probs = prior().base_dist.probs
        for i in range(G):
            for j in range(K):
                count = sum(int(k == j) for k in grids[:, i].tolist())
                expected = (count + smoothing) / (len(grids) + K * smoothing)
                assert probs[i, j].item() == pytest.approx(expected, abs=1e-6), (i, j)
    # without smoothing it is the maximum-likelihood estimate: no gradient step improves it
    prior = CategoricalCodePrior(K, G, smoothing=0.0)
    prior.fit_exact(grids)
    nll = -prior().log_prob(grids).sum()
    (grad,) = torch.autograd.grad(nll, [prior.logits])
    assert grad.abs().max().item() < 1e-3
    # with smoothing a code never seen keeps a finite log-probability
    smoothed = CategoricalCodePrior(K, G)
    smoothed.fit_exact(grids)
    assert torch.isfinite(smoothed().log_prob(torch.full((1, G), 3))).all()
    with pytest.raises(UserError, match="smoothing must not be negative"):
        CategoricalCodePrior(K, G, smoothing=-1.0)


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    """A one-epoch MLP VQ-VAE (4 positions, 8 codes) on fake MNIST, statically binarized."""
    from conftest import make_fake_mnist

    root = tmp_path_factory.mktemp("vq")
    data = make_fake_mnist(root / "data")
    config = vq_config(
        data,
        root / "run",
        arch="mlp",
        z_dim=4,
        hidden_dims=(32,),
        codebook_size=8,
        code_dim=2,
        epochs=1,
        eval_every=0,
        binarize="static",
    )
    return fit(config).path


def copy_run(run, tmp_path, **changes):
    """A copy of ``run`` to write priors into (``changes``: config fields to rewrite)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if changes:
        state = torch.load(copy / "checkpoint.pt", weights_only=True)
        state["config"].update(changes)
        torch.save(state, copy / "checkpoint.pt")
    return copy


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_killed_prior_fit_resumes_where_it_stopped(
    vq_run, tmp_path, monkeypatch, capsys, schedule
):
    import pyro_vae.runs.code_prior as stage2

    fit_prior = functools.partial(fit_code_prior, lr_schedule=schedule)

    run = copy_run(vq_run, tmp_path)
    straight = TransformerCodePrior(8, 4, num_layers=1)  # rebuilt under the fit's seed
    fit_prior(run, prior=straight, name="straight", epochs=3, quiet=True)

    real_grids = stage2.TrainingCodes.grids

    def killed_in_epoch_two(self, draw, label=None):
        if draw == 1:
            raise KeyboardInterrupt
        return real_grids(self, draw, label)

    monkeypatch.setattr(stage2.TrainingCodes, "grids", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        fit_prior(run, "transformer:1", epochs=3, quiet=True)
    folder = run / "priors" / "transformer-1"
    assert not (folder / "prior.pt").exists()  # not done, but epoch 1 is kept:
    assert len(torch.load(folder / "checkpoint.pt", weights_only=True)["rows"]) == 1
    monkeypatch.setattr(stage2.TrainingCodes, "grids", real_grids)
    capsys.readouterr()
    fit_prior(run, "transformer:1", epochs=3)
    out = capsys.readouterr().out
    assert "transformer-1: resuming after epoch 1" in out
    assert "epoch   1/3" not in out and "epoch   3/3" in out
    resumed = torch.load(folder / "prior.pt", weights_only=True)["state"]
    expected = torch.load(run / "priors" / "straight" / "prior.pt", weights_only=True)["state"]
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    rates = [float(r.split(",")[-1]) for r in rows[1:]]
    if schedule == "cosine":  # the rate of epoch n + 1: lr (1 + cos(pi n / E)) / 2
        assert rates == pytest.approx(
            [1e-3 * (1 + math.cos(math.pi * n / 3)) / 2 for n in range(3)]
        )
    else:
        assert rates == [1e-3] * 3
    # more epochs extend the finished fit; other settings start afresh
    fit_prior(run, "transformer:1", epochs=4, quiet=True)
    assert torch.load(folder / "prior.pt", weights_only=True)["epochs"] == 4
    fit_prior(run, "transformer:1", epochs=1, lr=3e-3)
    assert "made with other settings; fitting afresh" in capsys.readouterr().out
    assert torch.load(folder / "prior.pt", weights_only=True)["epochs"] == 1


def test_a_prior_checkpoint_from_before_schedules_resumes_as_constant(vq_run, tmp_path, capsys):
    run = copy_run(vq_run, tmp_path)
    fit_code_prior(run, "transformer:1", epochs=1, quiet=True)
    path = run / "priors" / "transformer-1" / "checkpoint.pt"
    old = torch.load(path, weights_only=True)
    for key in ("lr_schedule", "schedule"):
        del old[key]
    del old["rows"][0]["lr"]
    torch.save(old, path)
    fit_code_prior(run, "transformer:1", epochs=2)
    assert "resuming after epoch 1" in capsys.readouterr().out
    rows = (path.parent / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith(",lr") and rows[1].endswith(",") and rows[2].endswith(",0.001")
    with pytest.raises(UserError, match="--lr-schedule must be one of"):
        fit_code_prior(run, "transformer:1", lr_schedule="plateau")


@pytest.mark.parametrize("damage", ["rows", "state", "schedule"])
def test_a_damaged_prior_checkpoint_is_one_line_and_kept(vq_run, tmp_path, capsys, damage):
    run = copy_run(vq_run, tmp_path)
    fit_code_prior(run, "transformer:1", epochs=1, lr_schedule="cosine", quiet=True)
    path = run / "priors" / "transformer-1" / "checkpoint.pt"
    saved = torch.load(path, weights_only=True)
    saved[damage] = {"rows": 7, "state": {"nonsense": torch.zeros(2)}, "schedule": [{}, {}]}[damage]
    torch.save(saved, path)
    before = path.read_bytes()
    argv = ["fit-prior", str(run), "--prior", "transformer:1", "--epochs", "2"]
    assert main([*argv, "--lr-schedule", "cosine"]) == 2
    err = capsys.readouterr().err
    assert "cannot be resumed" in err and "move it away" in err and err.count("\n") == 1
    assert path.read_bytes() == before


def test_fit_prior_names_the_prior_on_every_line_and_shows_progress(vq_run, tmp_path, capsys):
    run = copy_run(vq_run, tmp_path)
    argv = ["fit-prior", str(run), "--prior", "categorical", "transformer:1", "--epochs", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.split("\n| prior |")[0].strip().splitlines()
    assert len(lines) == 2 + 3  # a line per epoch (one for the closed form), one when saved
    for line in lines:
        assert line.startswith(("categorical: ", "transformer-1: ")), line
    assert "transformer-1: epoch 2/2" in captured.err  # the bar inside the epoch
    assert main(argv + ["--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("| prior |")


@pytest.mark.parametrize("binarize, encodings", [("static", 1), ("dynamic", 3)])
def test_the_training_codes_are_encoded_once_per_binarization_draw(
    vq_run, tmp_path, monkeypatch, binarize, encodings
):
    import pyro_vae.runs.code_prior as stage2

    run = copy_run(vq_run, tmp_path, binarize=binarize)
    sizes = []
    real = stage2.code_grids

    def counted(model, x, *args, **kwargs):
        sizes.append(len(x))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(stage2, "code_grids", counted)
    specs = ["uniform", "categorical", "transformer:1"]
    stage2.fit_code_priors(run, specs, epochs=3, quiet=True)
    # the test set once; the training set (200 images) once per draw: static, one draw for
    # everything; dynamic, draws 0, 1 and 2 of the transformer's 3 epochs, draw 0 shared with
    # the categorical prior (the uniform prior needs none)
    assert sizes == [60] + [200] * encodings


def test_a_prior_fitted_to_the_grey_images_codes_encodes_them_once(vq_run, tmp_path, monkeypatch):
    """``train_codes="grey"``: the codes of the training images' grey levels (what a dynamic
    run keeps; every draw binarizes them), one encoding for every epoch, saved as NAME-grey."""
    import pyro_vae.runs.code_prior as stage2
    from pyro_vae import load_run

    run = copy_run(vq_run, tmp_path, binarize="dynamic")
    seen = []
    real = stage2.code_grids
    monkeypatch.setattr(
        stage2, "code_grids", lambda model, x, *a, **k: seen.append(x) or real(model, x, *a, **k)
    )
    result = fit_code_prior(run, "transformer:1", epochs=3, train_codes="grey", quiet=True)
    assert result["prior"] == "transformer-1-grey" and result["train_codes"] == "grey"
    _, data, _ = load_run(run)
    assert len(seen) == 2 and torch.equal(seen[1], data.train)  # the test set, then grey once
    assert not torch.equal(data.train, data.train.round())  # grey levels, not a draw
    with pytest.raises(UserError, match="keeps no grey training images"):
        fit_code_prior(vq_run, "transformer:1", train_codes="grey", quiet=True)


def test_load_vae_gives_the_vqvae_with_a_fitted_prior_and_plot_draws_from_each(vq_run, tmp_path):
    from pyro_vae import load_vae

    run = copy_run(vq_run, tmp_path)
    fit_code_prior(run, "categorical", quiet=True)
    fit_code_prior(run, "transformer:1", epochs=1, quiet=True)
    model, config = load_vae(str(run), prior="transformer-1")
    assert isinstance(model.prior, TransformerCodePrior) and config.model == "vqvae"
    assert model.sample(3).shape == (3, 784)
    expected = torch.load(run / "priors" / "transformer-1" / "prior.pt", weights_only=True)
    for key, value in expected["state"].items():
        assert torch.equal(model.prior.state_dict()[key], value)
    plain, _ = load_vae(str(run))
    assert isinstance(plain.prior, UniformCodePrior)
    with pytest.raises(UserError, match="fitted: categorical, transformer-1"):
        load_vae(str(run), prior="pixelsnail")
    fit_code_prior(
        run, "categorical(smoothing=1)", name="laplace", quiet=True
    )  # a name of one's own
    assert load_vae(str(run), prior="laplace")[0].prior.smoothing == 1
    names = {p.name for p in plot_run(run)}
    expected = {"samples-categorical.png", "samples-transformer-1.png", "samples-laplace.png"}
    assert {"samples.png"} | expected <= names
    assert (run / "figures" / "samples-transformer-1.png").is_file()
    assert model.sample(3, temperature=0.5).shape == (3, 784)
    main(["plot", str(run), "--temperature", "0.5"])
    assert (run / "figures" / "samples-transformer-1-t0.5.png").is_file()


def test_a_run_that_uses_few_codes_ends_with_a_hint(vq_run, capsys):
    from pyro_vae import load_vae

    model, _ = load_vae(str(vq_run))
    x = binary(50).new_zeros(50, 784)
    with torch.no_grad():  # every code far from the encoder's outputs but one
        model.codebook.vectors.fill_(1e3)
        model.codebook.vectors[5] = 0.0
    hint = model.end_of_run_hint(x)
    assert hint == (
        "only 1 of 8 codes used on 50 test images: train longer, or try --codebook-update ema "
        "(docs/vqvae.md)"
    )
    model.restart_codes = False
    assert "or try --codebook-update ema, or try --restart-codes" in model.end_of_run_hint(x)
    # fit prints it at the end: 2 positions of 60 test images cannot use a quarter of 512 codes
    data = vq_run.parent / "data"
    settings = dict(arch="mlp", z_dim=2, hidden_dims=(16,), codebook_size=512, code_dim=2)
    settings |= dict(epochs=1, eval_every=0, limit_train=100)
    capsys.readouterr()
    fit(vq_config(data, vq_run.parent / "few", quiet=False, **settings))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("only ") and "of 512 codes used on 60 test images" in last
    fit(vq_config(data, vq_run.parent / "quiet", **settings))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("halvings, side", [(2, 7), (3, 4), (4, 2), (5, 1)])
def test_the_conv_grid_shrinks_with_each_halving_and_decodes_to_the_image(halvings, side):
    from pyro_vae.models.networks import GridConvDecoder, GridConvEncoder, build_grid_networks

    encoder, decoder, positions = build_grid_networks(
        "conv", 784, 3, 0, (), BernoulliLikelihood(), (28, 28), halvings
    )
    assert positions == side * side
    z = encoder(torch.rand(5, 784))
    assert z.shape == (5, side * side, 3)
    assert decoder(z).shape == (5, 784) and decoder(z[None]).shape == (1, 5, 784)
    if halvings == 2:  # the default keeps the layers (and the checkpoints) it always had
        keys = {k.split(".")[1] for k in GridConvEncoder((28, 28), 3).state_dict()}
        assert keys == {"0", "2", "4", "6"}
        keys = {k.split(".")[1] for k in GridConvDecoder(3, (28, 28)).state_dict()}
        assert keys == {"0", "2", "4"}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grid-halvings", "1"], "--grid-halvings must be at least 2"),
        (["--arch", "mlp", "--grid-halvings", "3"], "--z-dim sets the number of grid positions"),
    ],
)
def test_bad_grid_halvings_give_one_line(capsys, fake_data_dir, tmp_path, flags, message):
    argv = ["train", "--model", "vqvae", *flags, "--data-dir", str(fake_data_dir)]
    assert main(argv + ["--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
