"""Runs: a training job and the folder it writes.

- :mod:`~pyro_vae.runs.config`: every setting (``TrainConfig``, saved as ``config.json``)
- :mod:`~pyro_vae.runs.fit`: the training job, one epoch loop; reloading a trained model
- :mod:`~pyro_vae.runs.folder`: the run folder (config, metrics, checkpoint, figures)
- :mod:`~pyro_vae.runs.resume`: continuing a run exactly from its checkpoint
"""
