"""Runs: a training job and the folder it writes.

- :mod:`~pyro_vae.runs.config`: every setting (``TrainConfig``, saved as ``config.json``)
- :mod:`~pyro_vae.runs.fit`: the training job, one epoch loop; reloading a trained model
- :mod:`~pyro_vae.runs.folder`: the run folder (config, metrics, checkpoints, figures)
- :mod:`~pyro_vae.runs.files`: how every file of a run is written; one writer per folder
- :mod:`~pyro_vae.runs.config_file`: settings from a recipe or a run's config.json
- :mod:`~pyro_vae.runs.early_stopping`: the best validation epoch, early stopping
- :mod:`~pyro_vae.runs.tensorboard`: TensorBoard logging
- :mod:`~pyro_vae.runs.resume`: continuing a run exactly from its checkpoint
"""
