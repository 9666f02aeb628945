"""Inference: objectives and the trainers that optimise them.

- :mod:`~pyro_vae.infer.traces`: per-data-point log-densities read off Pyro traces
- :mod:`~pyro_vae.infer.objectives`: ``trace``, ``meanfield`` and ``iwae`` losses
- :mod:`~pyro_vae.infer.svi`: joint steps on both parameter groups, and the shared step helpers
- :mod:`~pyro_vae.infer.compiled`: the step's loss and gradients traced once, compiled, replayed
- :mod:`~pyro_vae.infer.em`: variational EM (guide-only E-steps, model-only M-steps)
- :mod:`~pyro_vae.infer.mcem`, :mod:`~pyro_vae.infer.posterior_sampling`: Monte Carlo EM

Trainers see a model only through the interface of :mod:`pyro_vae.models.base`.
"""
