"""pyro-vae: variational autoencoders written as Pyro programs.

The model p(z) p_theta(x|z) and the guide q_phi(z|x) are Pyro programs (:class:`VAE`, the
autoencoder family, :class:`Autoencoder`, and the VQ-VAE, :class:`VQVAE`, all implementing
:class:`LatentModel`), trained by SVI
on Pyro's ELBOs (:class:`SVITrainer`, :func:`make_objective`) or variational EM
(:class:`EMTrainer`) and evaluated per data point (:func:`evaluate_elbo`). :func:`fit` runs a
whole training job into a run folder.

The package is layered; each subpackage imports only those below it:

    cli/         the pyro-vae command: train, compare, evaluate, plot, fit-prior
    runs/        config, the training job (fit), the run folder, resume, a VQ-VAE's stage 2
    evaluation/  ELBO, log-likelihood and other metrics, figures
    infer/       objectives and trainers (SVI, variational EM, Monte Carlo EM)
    models/      the model interface, the VAE, the autoencoders and the VQ-VAE, priors,
                 likelihoods, networks
    data/        image data sets as tensors
    errors.py, distributed.py, memory.py (malloc keeps freed memory: evaluation's speed)

Every public name is importable from ``pyro_vae`` itself.
"""

__version__ = "0.1.0"

from pyro_vae.data.images import ImageData, load_data, minibatches
from pyro_vae.errors import UserError
from pyro_vae.evaluation.elbo import elbo_terms, evaluate_elbo
from pyro_vae.evaluation.metrics import (
    active_units,
    heldout_metrics,
    log_likelihood,
    reconstruction_metrics,
)
from pyro_vae.evaluation.mutual_info import mutual_information
from pyro_vae.infer.em import EMTrainer
from pyro_vae.infer.mcem import MCEMTrainer
from pyro_vae.infer.objectives import iwae_loss, make_objective
from pyro_vae.infer.posterior_sampling import ChainSettings, PosteriorEncoder, sample_posterior
from pyro_vae.infer.svi import KLWarmup, SVITrainer
from pyro_vae.infer.traces import log_densities
from pyro_vae.memory import keep_freed_memory
from pyro_vae.models import MODELS
from pyro_vae.models.autoencoders import Autoencoder
from pyro_vae.models.base import LatentModel
from pyro_vae.models.code_priors import (
    CategoricalCodePrior,
    CodeVectors,
    TransformerCodePrior,
    UniformCodePrior,
)
from pyro_vae.models.codebook import Codebook
from pyro_vae.models.corruption import Corruption
from pyro_vae.models.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
)
from pyro_vae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from pyro_vae.models.priors import (
    FlowPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    VampPrior,
)
from pyro_vae.models.user_program import PyroProgramModel
from pyro_vae.models.vae import VAE, build_vae
from pyro_vae.models.vqvae import VQVAE
from pyro_vae.runs.code_prior import fit_code_prior, load_code_prior, prior_table
from pyro_vae.runs.config import TrainConfig
from pyro_vae.runs.fit import (
    fit,
    load_run,
    load_vae,
    make_trainer,
    run_data,
    setup,
    summary_table,
)
from pyro_vae.runs.folder import Run
from pyro_vae.runs.program import ProgramFit, fit_program

__all__ = [
    "LatentModel",
    "MODELS",
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
    "Corruption",
    "VQVAE",
    "Codebook",
    "CodeVectors",
    "UniformCodePrior",
    "CategoricalCodePrior",
    "TransformerCodePrior",
    "fit_code_prior",
    "load_code_prior",
    "prior_table",
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
    "keep_freed_memory",
    "active_units",
    "heldout_metrics",
    "reconstruction_metrics",
    "elbo_terms",
    "evaluate_elbo",
    "ImageData",
    "load_data",
    "minibatches",
    "TrainConfig",
    "Run",
    "fit",
    "fit_program",
    "ProgramFit",
    "PyroProgramModel",
    "setup",
    "load_vae",
    "run_data",
    "load_run",
    "summary_table",
    "UserError",
]
