"""How recognisable images are as digits, by the MNIST classifier the project trains itself
(:mod:`pyro_vae.evaluation.digits`): the inception score and the mean top probability.

For images x_1..x_N and the classifier's p(y | x):

    inception score  = exp( mean_i KL(p(y | x_i) || p(y)) ),   p(y) = mean_i p(y | x_i)
    max probability  = mean_i max_y p(y | x_i)

The inception score (Salimans et al. 2016) is high only when every image is read confidently as
one digit *and* the ten digits all occur: it is 1 for blank images, for noise the classifier
reads as one class, or for copies of a single digit, and at most 10. The mean top probability
alone is high for any confidently read image, copies included; the two together say "sharp"
and "varied". Neither says whether the images are new (a copy of the training set scores
like the test set): the models' bounds on log p(x) say that.
"""

import torch
from torch import nn

__all__ = ["classifier_scores"]


@torch.no_grad()
def classifier_scores(
    classifier: nn.Module, images: torch.Tensor, batch_size: int = 2000
) -> dict[str, float]:
    """``inception_score``, ``max_probability`` and ``digits_named`` (how many of the ten
    digits are the most likely one for at least 1% of the images) of ``images`` (N, 784) in
    [0, 1] under ``classifier`` (images -> logits of the ten digits)."""
    if images.dim() != 2 or images.shape[0] == 0:
        raise ValueError(f"expected images of shape (N, pixels), got {tuple(images.shape)}")
    log_probs = torch.cat(
        [classifier(x).log_softmax(-1) for x in images.float().split(batch_size)]
    ).double()
    probs = log_probs.exp()
    log_marginal = probs.mean(0).log()
    kl = (probs * (log_probs - log_marginal)).sum(-1)
    counts = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1])
    return {
        "inception_score": float(kl.mean().exp()),
        "max_probability": float(probs.max(-1).values.mean()),
        "digits_named": int((counts >= 0.01 * images.shape[0]).sum()),
    }
