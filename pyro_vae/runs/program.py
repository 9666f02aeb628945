"""Train a model and guide of your own from Python, without a run folder: :func:`fit_program`.

    fitted = fit_program(model, guide, x, algo="em", epochs=20)     # two functions, or
    fitted = fit_program(VAE(), data=x, algo="svi")                 # a module with both
    fitted.model              # the trained LatentModel (a PyroProgramModel)
    fitted.history            # one row per epoch, the columns of a run's metrics.csv

The settings are those of :class:`~pyro_vae.runs.config.TrainConfig` that a model of your own
reads (optimisation, objective, E-step rule, held-out metrics), checked as the command line
checks them. For a run folder (checkpoints, ``--resume``, ``evaluate``, ``plot``) save the data
to a ``.npy`` file and name the class: ``pyro-vae train --model file.py:Class --dataset x.npy``,
or ``pyro_vae.fit(TrainConfig(model="file.py:Class", dataset="x.npy"))``.
"""

import dataclasses
from collections.abc import Callable

import pyro
import torch
from torch import nn

from pyro_vae.data.files import split_data
from pyro_vae.errors import UserError
from pyro_vae.models.base import LatentModel
from pyro_vae.models.user_program import MODEL_FIELDS, as_latent_model
from pyro_vae.runs.config import TrainConfig
from pyro_vae.runs.fit import check_run_data, make_trainer, prepare_model, train_one_epoch

__all__ = ["ProgramFit", "fit_program"]

#: Settings that do not apply to training from Python: data and run-folder settings.
_NOT_HERE = ("model", "dataset", "test_dataset", "test_split", "data_dir", "out", "overwrite")
_NOT_HERE += ("resume", "tensorboard", "checkpoint_every", "seq_len", "device", "early_stopping")


@dataclasses.dataclass
class ProgramFit:
    """The trained model and one row per epoch (``train_loss``, ``test_elbo``, ...)."""

    model: LatentModel
    history: list[dict]
    config: TrainConfig


def fit_program(
    model: nn.Module | Callable,
    guide: Callable | None = None,
    data: torch.Tensor | None = None,
    test: torch.Tensor | None = None,
    image_shape: tuple[int, ...] | None = None,
    **settings,
) -> ProgramFit:
    """Train ``model`` and ``guide`` (two functions, or an ``nn.Module`` with both methods, or
    a :class:`LatentModel`) on ``data`` (N, ...), by ``algo="svi"`` (default) or ``"em"``.

    ``test``: the test data (default: a tenth of ``data`` held out, drawn with ``seed``);
    ``image_shape``: (H, W) when the points are images, if their shape does not say so;
    ``settings``: :class:`~pyro_vae.runs.config.TrainConfig` fields, e.g. ``epochs=20``,
    ``lr=1e-3``, ``e_rule="fixed"``, ``eval_every=5``; ``binarize`` defaults to ``"none"``
    (the data are used as they are). A setting that does not apply is a one-line
    :class:`UserError`.
    """
    if data is None:
        raise UserError("fit_program needs data: an (N, ...) float tensor")
    for name in settings:
        if name in _NOT_HERE or name in MODEL_FIELDS:
            raise UserError(f"fit_program: {name} does not apply to a model of your own here")
    settings.setdefault("binarize", "none")
    settings.setdefault("quiet", True)
    try:  # the settings' checks, on a config whose model settings are the defaults
        config = TrainConfig(**settings, likelihood="gaussian").validate()
    except TypeError as exc:
        raise UserError(f"fit_program: {exc}") from None
    data_set = split_data(
        torch.as_tensor(data),
        None if test is None else torch.as_tensor(test),
        config.binarize,
        config.val_size,
        config.limit_train,
        config.limit_test,
        config.seed,
        image_shape,
    )
    pyro.set_rng_seed(config.seed)
    data_rng = torch.Generator().manual_seed(config.seed)
    vae = as_latent_model(model, guide)
    prepare_model(vae, data_set, config)
    check_run_data(vae, data_set)
    trainer = make_trainer(config, vae, data_set)
    history = [
        train_one_epoch(config, data_set, vae, trainer, data_rng, epoch)
        for epoch in range(1, config.epochs + 1)
    ]
    return ProgramFit(vae.eval(), history, config)
