"""Rollouts of a sequence model: predicted futures against the true ones.

Condition on the first ``context`` frames of held-out sequences (half of them by default: 10 of
20), roll the model forward over the rest (:meth:`pyro_vae.models.tdvae.TDVAE.rollout`), and
score each predicted frame (the mean of p_D, a probability per pixel) against the true frame by
its binary cross-entropy summed over pixels, nats per frame, for horizons 1..H:

- ``rollout_bce``: the model's rollouts, one transition per frame, averaged over ``samples``
  rollouts per sequence;
- ``jumpy_bce``: rollouts of one transition per ``max_jump`` frames (the paper's jumpy
  predictions), at horizons J, 2J, ...;
- ``repeat_last_bce``: the baseline that predicts the last observed frame forever, smoothed to
  eps + (1 - 2 eps) x so that its cross-entropy is finite (eps = 0.01);
- ``frame_model_bce`` (given a ``frame_model``, any image model such as a VAE trained on the
  frames): the model with no belief and no dynamics, predicting its reconstruction of the last
  observed frame at every horizon;
- ``direction_accuracy``: the fraction of rollouts whose first predicted frame matches the last
  observed frame moved in the true direction better than moved in the other
  (:func:`~pyro_vae.data.sequences.motion_direction`).
"""

import torch

from pyro_vae.data.sequences import frames, motion_direction
from pyro_vae.models.base import LatentModel

__all__ = ["SMOOTHING", "frame_cross_entropy", "rollout_metrics"]

SMOOTHING = 0.01


def frame_cross_entropy(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of target frames under per-pixel probabilities, summed over the
    last dimension (pixels): nats per frame."""
    p = probs.clamp(1e-6, 1 - 1e-6)
    return -(target * p.log() + (1 - target) * (1 - p).log()).sum(-1)


@torch.no_grad()
def rollout_metrics(
    model: LatentModel,
    x: torch.Tensor,
    context: int | None = None,
    samples: int = 5,
    batch_size: int = 500,
    frame_model: LatentModel | None = None,
) -> dict:
    """The numbers of the module docstring on flat sequences ``x`` (N, T * frame_dim); lists are
    indexed by horizon - 1 (``jumpy_bce``: by step)."""
    d, t = model.frame_dim, model.seq_len
    context = context or t // 2
    horizon, jump = t - context, model.max_jump
    sums = {"rollout": 0.0, "repeat": 0.0, "jumpy": 0.0, "direction": 0.0, "frame": 0.0}
    was_training = model.training
    model.eval()
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        past, future = xb[:, : context * d], frames(xb, d)[:, context:]
        predicted = model.rollout(past, horizon, samples)  # (S, B, H, d)
        sums["rollout"] = sums["rollout"] + frame_cross_entropy(predicted, future).mean(0).sum(0)
        last = frames(past, d)[:, -1]
        repeated = SMOOTHING + (1 - 2 * SMOOTHING) * last[:, None]
        sums["repeat"] = sums["repeat"] + frame_cross_entropy(repeated, future).sum(0)
        if horizon >= jump:
            jumpy = model.rollout(past, horizon // jump, samples, jump=jump)
            targets = future[:, jump - 1 :: jump][:, : horizon // jump]
            sums["jumpy"] = sums["jumpy"] + frame_cross_entropy(jumpy, targets).mean(0).sum(0)
        if frame_model is not None:
            frame_model.eval()
            same = frame_model.reconstruct(last)[:, None]
            sums["frame"] = sums["frame"] + frame_cross_entropy(same, future).sum(0)
        truth = motion_direction(last, future[:, 0])
        guessed = motion_direction(last, predicted[:, :, 0])
        sums["direction"] += (guessed == truth).double().mean(0).sum().item()
    model.train(was_training)
    n = x.shape[0]
    frame = {} if frame_model is None else {"frame_model_bce": (sums["frame"] / n).tolist()}
    return frame | {
        "rollout_context": context,
        "rollout_samples": samples,
        "rollout_bce": (sums["rollout"] / n).tolist(),
        "rollout_bce_mean": (sums["rollout"] / n).mean().item(),
        "repeat_last_bce": (sums["repeat"] / n).tolist(),
        "repeat_last_bce_mean": (sums["repeat"] / n).mean().item(),
        "jumpy_bce": (sums["jumpy"] / n).tolist() if horizon >= jump else [],
        "jump": jump,
        "direction_accuracy": sums["direction"] / n,
    }
