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

:data:`MODELS` maps each ``--model`` name to its class; the run system builds a model with
``MODELS[name].from_config(...)`` and asks it what applies, so adding a model is one file here
and one line below.
"""

from pyro_vae.models.autoencoders import Autoencoder
from pyro_vae.models.base import LatentModel
from pyro_vae.models.tdvae import TDVAE
from pyro_vae.models.vae import VAE
from pyro_vae.models.vqvae import VQVAE

__all__ = ["MODELS", "LatentModel"]

MODELS: dict[str, type[LatentModel]] = {
    "vae": VAE,
    "ae": Autoencoder,
    "vqvae": VQVAE,
    "tdvae": TDVAE,
}
