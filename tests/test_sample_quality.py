"""The inception score and mean top probability (evaluation/sample_quality.py) against their
closed forms, and on real digits against trivial images that must score badly."""

import math

import pytest
import torch
from torch import nn

from pyro_vae.data.images import load_images
from pyro_vae.evaluation.digits import digit_classifier
from pyro_vae.evaluation.sample_quality import classifier_scores


class FixedLogits(nn.Module):
    """'Images' that are their own logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_confident_and_balanced_is_ten_copies_of_one_is_one():
    confident = torch.full((20, 10), -50.0)
    confident[torch.arange(20), torch.arange(20) % 10] = 50.0
    scores = classifier_scores(FixedLogits(), confident)
    assert scores["inception_score"] == pytest.approx(10.0, rel=1e-6)
    assert scores["max_probability"] == pytest.approx(1.0)
    assert scores["digits_named"] == 10
    one = confident[:1].expand(20, 10)
    assert classifier_scores(FixedLogits(), one)["inception_score"] == pytest.approx(1.0)
    assert classifier_scores(FixedLogits(), one)["digits_named"] == 1


def test_closed_form_for_two_classes():
    # half the images read p = (0.9, 0.1), half (0.1, 0.9): p(y) uniform, KL = log 2 - H(0.9)
    logits = torch.tensor([[math.log(9.0), 0.0], [0.0, math.log(9.0)]]).repeat(5, 1)
    entropy = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    scores = classifier_scores(FixedLogits(), logits)
    assert scores["inception_score"] == pytest.approx(math.exp(math.log(2) - entropy))
    assert scores["max_probability"] == pytest.approx(0.9)


def test_refuses_images_that_are_not_a_batch():
    with pytest.raises(ValueError, match="shape"):
        classifier_scores(FixedLogits(), torch.zeros(10))


@pytest.mark.slow
def test_real_digits_score_high_and_trivial_images_badly(real_data_dir):
    classifier = digit_classifier(str(real_data_dir))
    real = load_images("mnist", train=False, data_dir=str(real_data_dir))[:2000]
    real_scores = classifier_scores(classifier, real)
    assert real_scores["inception_score"] > 8.0 and real_scores["max_probability"] > 0.9
    g = torch.Generator().manual_seed(0)
    blob = torch.exp(-((torch.arange(28.0) - 13.5) ** 2) / 30)
    trivial = {
        "blank": torch.zeros(2000, 784),
        "grey": torch.full((2000, 784), 0.5),
        "noise": torch.rand(2000, 784, generator=g),
        "one digit copied": real[:1].expand(2000, 784),
        "a blob": (blob[:, None] * blob[None, :]).reshape(1, 784).expand(2000, 784),
        "the mean digit": real.mean(0, keepdim=True).expand(2000, 784),
    }
    for name, images in trivial.items():
        scores = classifier_scores(classifier, images)
        assert scores["inception_score"] < 1.5, name
        assert scores["digits_named"] <= 3, name
