"""The one interface every model implements, so that every trainer and command can run it.

A model is an ``nn.Module`` that holds two Pyro programs over the same latent sites, and tells
the run system what it is made of and what can be measured and drawn of it:

- ``model(x, kl_weight=1.0)``: p(z) p(x | z) for a minibatch, sites in ``pyro.plate("data")``;
- ``guide(x, kl_weight=1.0)``: q(z | x) over the same latent sites;
- ``guide_parameters()``: phi, what SVI and variational EM's E-steps train;
- ``model_parameters()``: theta, what SVI and the M-steps train (disjoint from phi);
- ``check_data(x)``: a one-line :class:`~pyro_vae.errors.UserError` for data it cannot model
  (checked once, never per step);
- ``codes(x)``: one point per data point in latent space (the posterior mean, or the code
  itself), for figures and active units;
- ``decode(z)``, ``decode_mean(z)``, ``reconstruct(x)``: p(x | z), its mean, and the mean of
  p(x | z = codes(x));
- ``figures``, ``metrics``: names of the figures (:mod:`pyro_vae.evaluation.figures`) and
  held-out metrics (:mod:`pyro_vae.evaluation.metrics`) that apply to this model;
- ``not_applicable``: standard metric -> why it is left out (eval.json says so);
- ``check_config(config)``, ``from_config(config, ...)``: class methods that reject flags that
  mean nothing for the model and build it from a run's settings; ``own_fields``: the
  :class:`~pyro_vae.runs.config.TrainConfig` fields only this model reads (other models refuse
  them);
- ``after_update(model_updated)``: called by the trainers after every optimizer step, for
  model-side updates that are not gradient steps (the VQ-VAE's codebook averages); a no-op here.
- ``prepare(x, point_shape, image_shape)``: called by the run system with a batch of training
  data before a trainer is built, for a model that needs data to know itself
  (``needs_example``: a model and guide of the user's own,
  :mod:`pyro_vae.models.user_program`); a no-op here.
- ``check_algo(algo)``: a one-line :class:`~pyro_vae.errors.UserError` when the trainer
  ``algo`` (``svi``, ``em``, ``mcem``) cannot train this model; the trainers call it.

Trainers only call ``model``, ``guide``, the two parameter groups, ``after_update`` and
``check_data``; the
ELBO-type objectives pair the programs whatever their latent sites are. Evaluation and figures
ask the model which of their functions apply, so no module outside ``models/`` tests which model
it holds. A new model is one file in this folder that subclasses :class:`LatentModel` and one
line in :data:`pyro_vae.models.MODELS`.
"""

from collections.abc import Iterator

import pyro
import torch
from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.models.likelihoods import check_data as check_support

__all__ = [
    "STANDARD_METRICS",
    "LATENT_FIGURES",
    "LatentModel",
    "check_flat_data",
    "refuse_flags",
]

#: The held-out metrics of a model with a proper prior and a density q(z|x) (see
#: :mod:`pyro_vae.evaluation.metrics`); a model lists those that do not apply in
#: ``not_applicable`` with the reason.
STANDARD_METRICS = ("elbo", "reconstruction", "log_likelihood", "active_units", "mutual_info")

#: The figures of a model of images with continuous codes (see
#: :mod:`pyro_vae.evaluation.figures`); ``samples`` needs a proper prior to draw from.
LATENT_FIGURES = (
    "reconstructions",
    "samples",
    "random_codes",
    "manifold",
    "latent",
    "interpolation",
)


class LatentModel(nn.Module):
    """Base of every model: the interface in the module docstring, and shared defaults.

    Subclasses set ``data_dim`` (D), ``decoder`` and ``likelihood`` (see
    :mod:`pyro_vae.models.likelihoods`) for the default :meth:`check_data`, :meth:`decode` and
    :meth:`decode_mean`, and fill ``figures``, ``metrics`` and
    ``not_applicable`` in their constructor.
    """

    data_dim: int | None = None
    decoder: nn.Module
    likelihood: nn.Module
    figures: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    not_applicable: dict[str, str] = {}
    own_fields: tuple[str, ...] = ()
    #: Settings of the library's models this model does not read at all (beside the other
    #: models' ``own_fields``): refused when given, left out of config.json.
    unread_fields: tuple[str, ...] = ()
    sequences: bool = False  # a model of sequences (flat (N, T * D) data) rather than images
    needs_example: bool = False  # prepare() must see data before the parameter groups exist

    # --- the run system ------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Raise a :class:`UserError` for settings of ``config`` that mean nothing here."""

    @classmethod
    def from_config(
        cls, config, data_dim: int, image_shape: tuple[int, int], prior: nn.Module | None = None
    ) -> "LatentModel":
        """The model a :class:`~pyro_vae.runs.config.TrainConfig` describes."""
        raise NotImplementedError

    # --- the two Pyro programs and their parameters --------------------------------------
    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        raise NotImplementedError

    def register_modules(self, *names: str) -> None:
        """``pyro.module`` for each named submodule that has parameters (a parameter-free prior
        or likelihood is left out of Pyro's parameter store)."""
        for name in names:
            module = getattr(self, name)
            if any(True for _ in module.parameters()):
                pyro.module(name, module)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        raise NotImplementedError

    def guide_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def model_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def prepare(
        self,
        x: torch.Tensor,
        point_shape: tuple[int, ...] | None = None,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        """Learn what the model needs from a batch ``x`` (N, D) of training data; nothing here."""

    def check_algo(self, algo: str) -> None:
        """Raise a :class:`UserError` if the trainer ``algo`` cannot train this model."""

    def after_update(self, model_updated: bool) -> None:
        """Called by trainers after each optimizer step; ``model_updated``: whether the step
        moved the model side (theta). Nothing to do for most models."""

    def end_of_run_hint(self, x: torch.Tensor) -> str | None:
        """A one-line hint printed when a training run ends, from held-out data ``x`` (on the
        CPU): a sign that the run is early or stuck and what to try, or None."""
        return None

    # --- data and pictures -----------------------------------------------------------------
    def check_data(self, x: torch.Tensor) -> None:
        """Reject a data tensor this model cannot score (see :func:`check_flat_data`)."""
        check_flat_data(x, self.data_dim, self.likelihood)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """One latent point per data point, shape (N, z_dim)."""
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.distributions.Distribution:
        """The distribution p(x | z), event shape (D,)."""
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z), shape (..., D): what figures show of a latent point."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z = codes(x)): what the model makes of x."""
        return self.decode_mean(self.codes(x))


def refuse_flags(model: str, refusals: list[tuple[bool, str, str]]) -> None:
    """Raise ``"{flag} does not apply to --model {model}: {why}"`` for the first refusal
    (refused, flag, why) that is refused: the shared form of ``check_config``."""
    for refused, flag, why in refusals:
        if refused:
            raise UserError(f"{flag} does not apply to --model {model}: {why}")


def check_flat_data(x: torch.Tensor, data_dim: int | None, likelihood: nn.Module) -> None:
    """Type, dtype, shape (N, D), finiteness and the likelihood's support of ``x``, each failure
    a one-line :class:`UserError` that says how to fix it."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"data must be a torch.Tensor, not {type(x).__name__}")
    if not x.is_floating_point():
        raise UserError(
            f"data must be floating point, got {x.dtype}: "
            "use x.float() with images scaled to [0, 1]"
        )
    expected = f"(N, {data_dim})" if data_dim else "(N, D)"
    wrong_width = data_dim is not None and x.dim() == 2 and x.shape[1] != data_dim
    if x.dim() != 2 or x.shape[0] == 0 or wrong_width:
        raise UserError(
            f"data must have shape {expected} with N > 0, got {tuple(x.shape)}: "
            "flatten images with x.reshape(len(x), -1)"
        )
    if not torch.isfinite(x).all():
        raise UserError("data contains NaN or infinite values")
    check_support(likelihood, x)
