"""User networks, the conv pair, shape errors, and end-to-end runs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import (
    VAE,
    ConvDecoder,
    ConvEncoder,
    SVITrainer,
    TrainConfig,
    build_vae,
    evaluate_elbo,
    fit,
    load_vae,
    make_objective,
)
from pyro_vae.errors import UserError
from pyro_vae.models.likelihoods import BernoulliLikelihood, GaussianLikelihood
from pyro_vae.models.priors import StandardNormalPrior

D, Z = 16, 2


class LinearEncoder(nn.Module):
    """The documented signature: x (batch, D) -> (loc, scale), each (batch, z_dim)."""

    def __init__(self, data_dim: int, z_dim: int, scale_shape_bug: bool = False) -> None:
        super().__init__()
        self.loc = nn.Linear(data_dim, z_dim)
        self.log_scale = nn.Linear(data_dim, z_dim + int(scale_shape_bug))

    def forward(self, x):
        return self.loc(x), self.log_scale(x).exp()


class ResidualDecoder(nn.Module):
    """z (..., z_dim) -> logits (..., D), any leading dimensions."""

    def __init__(self, z_dim: int, data_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.a = nn.Linear(z_dim, 32)
        self.b = nn.Linear(32, out_dim or data_dim)

    def forward(self, z):
        return self.b(F.softplus(self.a(z)))


def structured_data(n: int = 256) -> torch.Tensor:
    """Binary data with two latent factors: the left or right half lit, with noise."""
    g = torch.Generator().manual_seed(3)
    side = torch.rand(n, 1, generator=g) < 0.5
    probs = torch.where(side, 0.9, 0.1) * torch.ones(n, D // 2)
    probs = torch.cat([probs, 1 - probs], dim=1)
    return torch.bernoulli(probs, generator=g)


def test_custom_networks_train():
    x = structured_data()
    vae = VAE(
        LinearEncoder(D, Z), ResidualDecoder(Z, D), StandardNormalPrior(Z), BernoulliLikelihood(), D
    )
    before = evaluate_elbo(vae, x, num_samples=20)["elbo"]
    trainer = SVITrainer(vae, make_objective("trace"), lr=1e-2)
    for _ in range(8):
        trainer.train_epoch(x, 32)
    after = evaluate_elbo(vae, x, num_samples=20)["elbo"]
    assert after > before + 2.0


def test_conv_pair_shapes_and_training():
    encoder, decoder = ConvEncoder((28, 28), Z, channels=4), ConvDecoder(Z, (28, 28), 2, 4)
    loc, scale = encoder(torch.rand(5, 784))
    assert loc.shape == scale.shape == (5, Z) and (scale > 0).all()
    assert decoder(torch.randn(3, 5, Z)).shape == (3, 5, 2 * 784)
    assert decoder(torch.randn(Z)).shape == (2 * 784,)
    vae = build_vae(784, Z, arch="conv", likelihood="gaussian", gaussian_scale="decoder")
    assert isinstance(vae.encoder, ConvEncoder) and vae.decoder.net[-1].out_channels == 2
    trainer = SVITrainer(vae, make_objective("iwae", 3))
    assert torch.isfinite(trainer.step(torch.rand(4, 784)))


@pytest.mark.parametrize(
    "encoder, decoder, message",
    [
        (LinearEncoder(D, Z, scale_shape_bug=True), None, r"each of shape \(3, 2\)"),
        (nn.Linear(D, Z), None, r"\(loc, scale\)"),
        (LinearEncoder(D + 1, Z), None, "failed on an input of shape"),
        (None, ResidualDecoder(Z, D, out_dim=D - 1), r"shape \(2, 3, 16\)"),
        (None, nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * Z, D)), r"\(2, 3, 16\)"),
    ],
)
def test_wrong_shapes_name_the_expected_shapes(encoder, decoder, message):
    with pytest.raises(UserError, match=message):
        VAE(
            encoder or LinearEncoder(D, Z),
            decoder or ResidualDecoder(Z, D),
            StandardNormalPrior(Z),
            BernoulliLikelihood(),
            data_dim=D,
        )


def test_decoder_output_size_follows_the_likelihood():
    with pytest.raises(UserError, match=r"\(2, 3, 32\)"):  # 2 * D: loc and scale
        VAE(
            LinearEncoder(D, Z),
            ResidualDecoder(Z, D),
            StandardNormalPrior(Z),
            GaussianLikelihood(D, "decoder"),
            data_dim=D,
        )


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["mog:3", "vamp:3", "flow:2"])
def test_priors_train_save_and_reload(fake_data_dir, tmp_path, prior):
    config = TrainConfig(
        data_dir=str(fake_data_dir),
        prior=prior,
        z_dim=4,
        hidden_dims=(32,),
        epochs=1,
        batch_size=64,
        out=str(tmp_path / "run"),
        quiet=True,
    )
    run = fit(config)
    vae, loaded = load_vae(str(run.path))
    assert loaded.prior == prior
    state = torch.load(run.checkpoint_path, weights_only=False)["vae"]
    for name, value in vae.state_dict().items():
        assert torch.equal(value, state[name])
    z = torch.randn(5, 4)
    assert torch.isfinite(vae.prior().log_prob(z)).all()


@pytest.mark.slow
def test_meanfield_warns_when_the_kl_is_monte_carlo(fake_data_dir, tmp_path):
    config = TrainConfig(
        data_dir=str(fake_data_dir),
        prior="mog:2",
        elbo="meanfield",
        z_dim=2,
        hidden_dims=(16,),
        epochs=1,
        limit_train=64,
        out=str(tmp_path / "run"),
        quiet=True,
    )
    with pytest.warns(UserWarning, match="no closed-form KL"):
        fit(config)


@pytest.mark.slow
def test_conv_arch_runs_end_to_end(fake_data_dir, tmp_path):
    config = TrainConfig(
        data_dir=str(fake_data_dir),
        arch="conv",
        z_dim=4,
        epochs=1,
        limit_train=64,
        limit_test=32,
        out=str(tmp_path / "run"),
        quiet=True,
    )
    run = fit(config)
    vae, _ = load_vae(str(run.path))
    assert isinstance(vae.decoder, ConvDecoder)


@pytest.mark.slow
def test_custom_prior_example_runs_both_ways(fake_data_dir, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "custom_prior.py"
    spec = importlib.util.spec_from_file_location("custom_prior", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--data-dir", str(fake_data_dir), "--limit-train", "100", "--epochs", "1"]
    argv += ["--z-dim", "4", "--hidden-dims", "32"]
    by_name, in_python = tmp_path / "by-name", tmp_path / "in-python"
    assert example.main(argv + ["--out", str(by_name)]) == 0
    assert example.main(argv + ["--out", str(in_python), "--in-python"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("test ELBO (10 samples/image)") == 2 and "Laplace scales" in printed
    # by name: config.json records the file and class, and the run reloads without the example
    vae, config = load_vae(str(by_name))
    assert config.prior == f"{path.resolve()}:LaplacePrior(init_scale=1.0)"
    assert not torch.equal(vae.prior.log_scale, torch.zeros(4))  # the learned scales came back
    # in Python: the run records "custom" and needs a fresh instance to reload
    with pytest.raises(UserError, match="prior module given in Python"):
        load_vae(str(in_python))
    vae, config = load_vae(str(in_python), prior=example.LaplacePrior(4))
    assert config.prior == "custom"
    assert not torch.equal(vae.prior.log_scale, torch.zeros(4))
