"""Models: Pyro model/guide pairs and the parts they are built from.

- :mod:`~pyro_vae.models.base`: the one interface every model implements (:class:`LatentModel`)
- :mod:`~pyro_vae.models.vae`: the variational autoencoder (``--model vae``)
- :mod:`~pyro_vae.models.autoencoders`: the autoencoder, sparse and denoising (``--model ae``)
- :mod:`~pyro_vae.models.vqvae`: the VQ-VAE (``--model vqvae``), with
  :mod:`~pyro_vae.models.codebook` and the priors over its codes
  :mod:`~pyro_vae.models.code_priors`
- :mod:`~pyro_vae.models.tdvae`: the TD-VAE, a model of sequences (``--model tdvae``)
- :mod:`~pyro_vae.models.priors`, :mod:`~pyro_vae.models.likelihoods`,
  :mod:`~pyro_vae.models.networks`, :mod:`~pyro_vae.models.corruption`: the parts

:data:`MODELS` maps each built-in ``--model`` name to its class; the run system builds a model
with ``model_class(spec).from_config(...)`` and asks it what applies, so adding a model is one
file here and one line below. A model of your own needs neither: ``--model my_models:MyModel``
(or ``path/to/file.py:MyModel``, or a name in the entry-point group ``pyro_vae.models``) names a
:class:`LatentModel` subclass (:mod:`pyro_vae.plugins`), or any ``nn.Module`` with ``model(x)``
and ``guide(x)`` methods, optionally with constructor arguments (``'file.py:VAE(z_dim=10)'``),
which :mod:`~pyro_vae.models.user_program` wraps.
"""

from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.models.autoencoders import Autoencoder
from pyro_vae.models.base import LatentModel
from pyro_vae.models.tdvae import TDVAE
from pyro_vae.models.user_program import PyroProgramModel, program_class
from pyro_vae.models.vae import VAE
from pyro_vae.models.vqvae import VQVAE
from pyro_vae.plugins import check_spec, parse_spec, resolve

__all__ = ["MODELS", "LatentModel", "PyroProgramModel", "model_class"]

MODELS: dict[str, type[LatentModel]] = {
    "vae": VAE,
    "ae": Autoencoder,
    "vqvae": VQVAE,
    "tdvae": TDVAE,
}


def model_class(spec: str) -> type[LatentModel]:
    """The class a ``--model`` spec names: built in, installed, or ``module:Class``; for an
    ``nn.Module`` with ``model`` and ``guide`` methods, the :class:`PyroProgramModel` that
    builds it (its arguments checked against its constructor)."""
    if spec in MODELS:
        return MODELS[spec]
    parsed = parse_spec(spec, "--model")
    cls = resolve(parsed, "model", "--model", MODELS)
    if isinstance(cls, type) and issubclass(cls, LatentModel):
        if parsed.arg is not None or parsed.kwargs:
            raise UserError(f"--model {spec}: a model takes no arguments; it reads the run's flags")
        return cls
    programs = callable(getattr(cls, "model", None)) and callable(getattr(cls, "guide", None))
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and programs):
        raise UserError(
            f"--model {spec}: not a subclass of pyro_vae.LatentModel, nor an nn.Module with "
            "model(x) and guide(x) methods"
        )
    check_spec(spec, "model", "--model", MODELS, ("data_dim",), nn.Module)
    return program_class(spec)
