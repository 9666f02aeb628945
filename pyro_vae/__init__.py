"""pyro-vae: variational autoencoders written as Pyro programs.

The model p(z) p_theta(x|z) and the guide q_phi(z|x) are Pyro programs (:class:`VAE`), trained by
SVI on Pyro's ELBOs (:class:`SVITrainer`, :func:`make_objective`) and evaluated per data point
(:func:`evaluate_elbo`). :func:`fit` runs a whole training job into a run folder.
"""

__version__ = "0.1.0"

from pyro_vae.autoencoder import Autoencoder, train_autoencoder
from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, load_data, minibatches
from pyro_vae.em import EMTrainer
from pyro_vae.errors import UserError
from pyro_vae.evaluation import elbo_terms, evaluate_elbo
from pyro_vae.fit import fit, load_vae, make_trainer, setup, summary_table
from pyro_vae.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
)
from pyro_vae.mcem import MCEMTrainer
from pyro_vae.metrics import active_units, heldout_metrics, log_likelihood
from pyro_vae.mutual_info import mutual_information
from pyro_vae.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from pyro_vae.objectives import iwae_loss, make_objective
from pyro_vae.posterior_sampling import ChainSettings, PosteriorEncoder, sample_posterior
from pyro_vae.priors import FlowPrior, MixtureOfGaussiansPrior, StandardNormalPrior, VampPrior
from pyro_vae.run import Run
from pyro_vae.svi import KLWarmup, SVITrainer
from pyro_vae.traces import log_densities
from pyro_vae.vae import VAE, build_vae

__all__ = [
    "VAE",
    "build_vae",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "StandardNormalPrior",
    "MixtureOfGaussiansPrior",
    "VampPrior",
    "FlowPrior",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "ContinuousBernoulliLikelihood",
    "Autoencoder",
    "train_autoencoder",
    "make_objective",
    "iwae_loss",
    "log_densities",
    "SVITrainer",
    "KLWarmup",
    "EMTrainer",
    "MCEMTrainer",
    "ChainSettings",
    "sample_posterior",
    "PosteriorEncoder",
    "make_trainer",
    "mutual_information",
    "log_likelihood",
    "active_units",
    "heldout_metrics",
    "elbo_terms",
    "evaluate_elbo",
    "ImageData",
    "load_data",
    "minibatches",
    "TrainConfig",
    "Run",
    "fit",
    "setup",
    "load_vae",
    "summary_table",
    "UserError",
]
