"""Rollouts of a sequence model: predicted futures against the true ones, by measures that fail
when the digit is lost, stalls or fades.

Condition on the first ``context`` frames of held-out sequences (half of them by default: 10 of
20), roll the model forward over the rest (:meth:`pyro_vae.models.tdvae.TDVAE.rollout`,
``samples`` rollouts per sequence), and measure, per horizon h = 1..H (lists indexed h - 1):

- ``rollout_bce``: the binary cross-entropy (nats per frame, summed over pixels) of the true
  frame under the rollouts' mean frame (the mean over samples of p_D's means); against the
  baselines ``repeat_last_bce`` (the last observed frame forever), ``oracle_bce`` (the last
  observed frame moved the true way: what a model that knows the motion predicts) and, given a
  ``frame_model`` (an image model such as a VAE trained on single frames),
  ``frame_model_bce`` (its reconstruction of the last observed frame forever). The baselines
  are smoothed to eps + (1 - 2 eps) x (eps = 0.01) so that their cross-entropy is finite.
- ``rollout_direction``: the fraction of rollouts that move the digit the true way over the
  whole rollout: the horizontal shifts that best align consecutive predicted frames
  (:func:`~pyro_vae.data.sequences.best_shift`), summed over the rollout, have the sign of the
  true motion; ``rollout_still``: the fraction whose sum is 0 (no motion at all). A rollout
  that stalls, fades or jumps once and stops is wrong.
- ``displacement``: the mean shift, in pixels along the true direction, that best aligns the
  last observed frame with the predicted frame; ``displacement_truth``: the same for the true
  frames (h for moving MNIST); ``displacement_error``: the mean |predicted - true| shift.
- ``identity_rollout`` and ``identity_truth`` (given a ``classifier`` and the sequences'
  ``labels``): the fraction of predicted (resp. true) frames, re-aligned to the digit's start
  position by undoing the true motion, that the classifier
  (:mod:`pyro_vae.evaluation.digits`) names as the sequence's digit.
- ``jumpy_bce``, ``jumpy_displacement``, ``jumpy_horizons``: the cross-entropy and the mean
  displacement of jumpy rollouts, one transition per ``max_jump`` frames (the paper's jumpy
  predictions), at horizons J, 2J, ...

:func:`rollout_goals` tests a result against issue 34's goals. Shifts are found modulo the
frame width (|s| <= 14 pixels for MNIST), so displacements beyond 14 pixels wrap around.
"""

from collections.abc import Callable

import torch

from pyro_vae.data.sequences import best_shift, frames, roll_frames
from pyro_vae.models.base import LatentModel

__all__ = [
    "SMOOTHING",
    "frame_cross_entropy",
    "rollout_metrics",
    "score_rollouts",
    "rollout_goals",
]

SMOOTHING = 0.01


def frame_cross_entropy(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of target frames under per-pixel probabilities, summed over the
    last dimension (pixels): nats per frame."""
    p = probs.clamp(1e-6, 1 - 1e-6)
    return -(target * p.log() + (1 - target) * (1 - p).log()).sum(-1)


def _smoothed(x: torch.Tensor) -> torch.Tensor:
    return SMOOTHING + (1 - 2 * SMOOTHING) * x


def score_rollouts(
    predicted: torch.Tensor,
    sequences: torch.Tensor,
    context: int,
    image_shape: tuple[int, int] = (28, 28),
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sequence scores of rollouts ``predicted`` (S, B, H, d) (frames in [0, 1]) of
    ``sequences`` (B, T, d) observed for their first ``context`` frames, H <= T - context:

    ``bce`` (B, H) of the mean frame, ``repeat``, ``oracle`` (B, H) of the baselines,
    ``direction`` and ``still`` (S, B) (None when H < 2: no consecutive predicted frames),
    ``displacement`` (S, B, H) and ``truth_displacement`` (B, H) along the true direction,
    ``displacement_error`` (S, B, H), and
    with a ``classifier`` (frames -> logits) and ``labels`` (B,): ``identity`` (S, B, H) and
    ``truth_identity`` (B, H), booleans of naming the digit. See the module docstring.
    """
    horizon = predicted.shape[-2]
    future = sequences[:, context : context + horizon]
    last = sequences[:, context - 1]
    true_shift = best_shift(last[:, None], future, image_shape)  # (B, H)
    sign = torch.sign(true_shift.sum(-1))  # (B,): +1 right, -1 left
    oracle = roll_frames(last[:, None].expand_as(future), true_shift, image_shape)
    shift = best_shift(last[:, None], predicted, image_shape)  # (S, B, H)
    scores = {
        "bce": frame_cross_entropy(predicted.mean(0), future),
        "repeat": frame_cross_entropy(_smoothed(last[:, None]), future),
        "oracle": frame_cross_entropy(_smoothed(oracle), future),
        "displacement": shift * sign[:, None],
        "truth_displacement": true_shift * sign[:, None],
        "displacement_error": (shift - true_shift).abs(),
        "direction": None,
        "still": None,
    }
    if horizon >= 2:
        moved = best_shift(predicted[..., :-1, :], predicted[..., 1:, :], image_shape).sum(-1)
        scores["direction"] = torch.sign(moved) == sign
        scores["still"] = moved == 0
    if classifier is not None and labels is not None:
        from_start = best_shift(sequences[:, :1], future, image_shape)  # (B, H), modulo width
        aligned = roll_frames(predicted, -from_start, image_shape)
        scores["identity"] = classifier(aligned).argmax(-1) == labels[:, None]
        truth = classifier(roll_frames(future, -from_start, image_shape)).argmax(-1)
        scores["truth_identity"] = truth == labels[:, None]
    return scores


@torch.no_grad()
def rollout_metrics(
    model: LatentModel,
    x: torch.Tensor,
    context: int | None = None,
    samples: int = 5,
    batch_size: int = 500,
    frame_model: LatentModel | None = None,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: torch.Tensor | None = None,
    image_shape: tuple[int, int] = (28, 28),
) -> dict:
    """The numbers of the module docstring on flat sequences ``x`` (N, T * frame_dim); the
    identity scores need both ``classifier`` and ``labels`` (N,)."""
    d, t = model.frame_dim, model.seq_len
    context = context or t // 2
    horizon, jump = t - context, model.max_jump
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, x.shape[0], batch_size):
        sequences = frames(x[start : start + batch_size], d)
        past = sequences[:, :context].flatten(1)
        batch_labels = None if labels is None else labels[start : start + batch_size]
        scores = score_rollouts(
            model.rollout(past, horizon, samples),
            sequences,
            context,
            image_shape,
            classifier,
            batch_labels,
        )
        if horizon >= jump:
            jumpy = model.rollout(past, horizon // jump, samples, jump=jump)
            at_jumps = sequences[:, : context + horizon // jump * jump]
            at_jumps = torch.cat(
                [at_jumps[:, :context], at_jumps[:, context + jump - 1 :: jump]], 1
            )
            jumpy_scores = score_rollouts(jumpy, at_jumps, context, image_shape)
            scores["jumpy_bce"] = jumpy_scores["bce"]
            scores["jumpy_displacement"] = jumpy_scores["displacement"]
        if frame_model is not None:
            frame_model.eval()
            same = frame_model.reconstruct(sequences[:, context - 1])[:, None]
            scores["frame"] = frame_cross_entropy(same, sequences[:, context:])
        for key, value in scores.items():
            if value is not None:
                parts.setdefault(key, []).append(value)
    model.train(was_training)

    def per_horizon(key: str) -> list[float]:
        values = torch.cat(parts[key], dim=-2)  # (..., N, H)
        return values.double().flatten(0, -2).mean(0).tolist()

    def overall(key: str) -> float | None:  # (S, B) per batch
        return torch.cat(parts[key], dim=-1).double().mean().item() if key in parts else None

    result = {
        "rollout_sequences": x.shape[0],
        "rollout_context": context,
        "rollout_samples": samples,
        "rollout_bce": per_horizon("bce"),
        "rollout_bce_mean": sum(per_horizon("bce")) / horizon,
        "repeat_last_bce": per_horizon("repeat"),
        "repeat_last_bce_mean": sum(per_horizon("repeat")) / horizon,
        "oracle_bce": per_horizon("oracle"),
        "rollout_direction": overall("direction"),
        "rollout_still": overall("still"),
        "displacement": per_horizon("displacement"),
        "displacement_truth": per_horizon("truth_displacement"),
        "displacement_error": per_horizon("displacement_error"),
        "displacement_error_mean": sum(per_horizon("displacement_error")) / horizon,
        "jump": jump,
        "jumpy_horizons": list(range(jump, horizon + 1, jump)),
        "jumpy_bce": per_horizon("jumpy_bce") if "jumpy_bce" in parts else [],
        "jumpy_displacement": per_horizon("jumpy_displacement") if "jumpy_bce" in parts else [],
    }
    if "identity" in parts:
        result["identity_rollout"] = per_horizon("identity")
        result["identity_truth"] = per_horizon("truth_identity")
    if "frame" in parts:
        result["frame_model_bce"] = per_horizon("frame")
    return result


def rollout_goals(result: dict) -> dict[str, bool]:
    """Issue 34's goals, each True or False, for a :func:`rollout_metrics` result (a goal whose
    numbers the result lacks is left out): direction right over the whole rollout in >= 95% of
    rollouts; mean displacement within 1 pixel of the truth at every horizon; digit identity
    >= 90% of the true frames' rate at the middle horizon and >= 80% at the last; cross-entropy
    below repeat-last and below the frame model at every horizon; jumpy rollouts at least as
    good as step-by-step at the jumps' horizons."""
    bce = result["rollout_bce"]
    goals = {
        "direction": (result["rollout_direction"] or 0.0) >= 0.95,
        "displacement": all(
            abs(a - b) <= 1.0
            for a, b in zip(result["displacement"], result["displacement_truth"], strict=True)
        ),
        "below_repeat_last": all(
            a < b for a, b in zip(bce, result["repeat_last_bce"], strict=True)
        ),
    }
    if "identity_rollout" in result:
        rollout, truth = result["identity_rollout"], result["identity_truth"]
        middle = (len(rollout) + 1) // 2 - 1
        goals["identity_middle"] = rollout[middle] >= 0.9 * truth[middle]
        goals["identity_last"] = rollout[-1] >= 0.8 * truth[-1]
    if "frame_model_bce" in result:
        goals["below_frame_model"] = all(
            a < b for a, b in zip(bce, result["frame_model_bce"], strict=True)
        )
    if result["jumpy_bce"]:
        goals["jumpy"] = all(
            jumpy <= bce[h - 1]
            for h, jumpy in zip(result["jumpy_horizons"], result["jumpy_bce"], strict=False)
        )
    return goals
