"""Data loading, root resolution, binarization, splits and minibatches."""

import pytest
import torch

from pyro_vae import UserError, load_data, minibatches
from pyro_vae.data.images import load_images, resolve_data_root


def test_loads_torchvision_layout_as_floats_in_unit_interval(fake_data_dir):
    x = load_images("mnist", train=True, data_dir=str(fake_data_dir))
    assert x.shape == (600, 784) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert load_images("fashion-mnist", train=False, data_dir=str(fake_data_dir)).shape == (
        200,
        784,
    )


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_VAE_DATA_DIR", "/from/env")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_data_root("/explicit") == (resolve_data_root("/explicit")[0], False)
    assert str(resolve_data_root("/explicit")[0]) == "/explicit"
    assert str(resolve_data_root(None)[0]) == "/from/env"
    monkeypatch.delenv("PYRO_VAE_DATA_DIR")
    root, may_download = resolve_data_root(None)
    assert root == tmp_path / "pyro-vae" and may_download


def test_missing_folder_names_both_ways_to_point_at_data(tmp_path):
    with pytest.raises(UserError, match="--data-dir or PYRO_VAE_DATA_DIR"):
        load_images("mnist", train=True, data_dir=str(tmp_path / "nowhere"))


def test_folder_without_the_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no mnist files under"):
        load_images("mnist", train=True, data_dir=str(tmp_path))


def test_corrupt_files_are_a_user_error(fake_data_dir):
    (fake_data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(UserError, match="could not read mnist"):
        load_images("mnist", train=True, data_dir=str(fake_data_dir))


def test_failed_download_offline_is_a_user_error(monkeypatch, tmp_path):
    from torchvision import datasets

    def offline(self):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.delenv("PYRO_VAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(UserError, match="could not download mnist.*PYRO_VAE_DATA_DIR"):
        load_images("mnist", train=True)


def test_unknown_dataset_and_binarization(fake_data_dir):
    with pytest.raises(UserError, match="unknown dataset"):
        load_images("cifar", train=True, data_dir=str(fake_data_dir))
    with pytest.raises(UserError, match="unknown binarization"):
        load_data("mnist", str(fake_data_dir), binarize="sometimes")


def test_dynamic_binarization_resamples_training_but_not_test(fake_data_dir):
    data = load_data("mnist", str(fake_data_dir), binarize="dynamic", seed=0)
    g = torch.Generator().manual_seed(0)
    a, b = data.train_epoch(g), data.train_epoch(g)
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)
    assert abs(a.mean() - data.train.mean()) < 0.01  # Bernoulli(intensity) keeps the mean
    again = load_data("mnist", str(fake_data_dir), binarize="dynamic", seed=5)
    assert torch.equal(data.test, again.test)  # the test set does not depend on --seed
    assert set(data.test.unique().tolist()) == {0.0, 1.0}


def test_static_binarization_is_fixed_by_seed(fake_data_dir):
    a = load_data("mnist", str(fake_data_dir), binarize="static", seed=1)
    b = load_data("mnist", str(fake_data_dir), binarize="static", seed=1)
    c = load_data("mnist", str(fake_data_dir), binarize="static", seed=2)
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert torch.equal(a.train_epoch(), a.train_epoch())
    assert set(a.train.unique().tolist()) == {0.0, 1.0}


def test_no_binarization_keeps_intensities(fake_data_dir):
    data = load_data("mnist", str(fake_data_dir), binarize="none")
    assert len(data.train.unique()) > 2


def test_validation_split_and_limits(fake_data_dir):
    data = load_data(
        "mnist",
        str(fake_data_dir),
        binarize="none",
        val_size=100,
        limit_train=50,
        limit_test=30,
        seed=0,
    )
    assert data.val.shape == (100, 784) and data.train.shape == (50, 784)
    assert data.test.shape == (30, 784)
    full = load_data("mnist", str(fake_data_dir), binarize="none", val_size=100, seed=0)
    rows = {tuple(r.tolist()) for r in full.val}
    assert not any(tuple(r.tolist()) in rows for r in full.train)  # held out, disjoint
    with pytest.raises(UserError, match="leaves no training data"):
        load_data("mnist", str(fake_data_dir), val_size=600)


def test_minibatches_cover_the_data_once():
    x = torch.arange(10.0).unsqueeze(1)
    batches = list(minibatches(x, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).squeeze(1).tolist()) == list(range(10))
