"""Evaluation: held-out numbers and pictures of a trained model.

- :mod:`~pyro_vae.evaluation.elbo`: the ELBO per data point and its two terms
- :mod:`~pyro_vae.evaluation.metrics`: log-likelihood, active units, reconstruction, sparsity,
  denoising, and :data:`~pyro_vae.evaluation.metrics.METRICS` (name -> estimator)
- :mod:`~pyro_vae.evaluation.mutual_info`: I_q(x; z) (He et al. 2019)
- :mod:`~pyro_vae.evaluation.figures`: the figures of a run, and
  :data:`~pyro_vae.evaluation.figures.FIGURES` (name -> drawing function)

Each model names the metrics and figures that apply to it (``model.metrics``, ``model.figures``).
"""
