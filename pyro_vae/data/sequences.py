"""Moving MNIST as in TD-VAE's first experiment (Gregor et al. 2019, Section 5.1).

Each sequence is one MNIST digit moving left or right by one pixel per frame, wrapping around
the image's edge, with the direction drawn per sequence; the first frame is the digit where
MNIST has it. Sequences are generated from the MNIST files the project already reads,
deterministically from a seed, the training sequences from MNIST's training digits and the test
sequences from its test digits.

A data set of sequences is stored flat, like images: shape (N, T * h * w), frame after frame, so
that minibatches, binarization (each pixel of each frame drawn independently), sharding and
checkpoints treat it like any other data set; :func:`frames` views it as (N, T, h * w).
"""

import torch

__all__ = ["moving_digits", "frames", "motion_direction"]


def moving_digits(
    images: torch.Tensor,
    seq_len: int,
    generator: torch.Generator,
    image_shape: tuple[int, int] = (28, 28),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of ``seq_len`` frames of each image (N, h * w) shifted by one pixel per frame,
    and the directions (N,) drawn from ``generator``: +1 moves right, -1 left.

    Returns the flat sequences (N, seq_len * h * w) and the directions.
    """
    n = images.shape[0]
    direction = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    grid = images.reshape(n, 1, *image_shape)
    width = image_shape[1]
    column = torch.arange(width)
    steps = torch.arange(seq_len)
    # frame t of sequence i shows column (c - direction_i * t) mod w of the digit at column c
    source = (column[None, None, :] - direction[:, None, None] * steps[None, :, None]) % width
    index = source[:, :, None, :].expand(n, seq_len, image_shape[0], width)
    moved = torch.gather(grid.expand(n, seq_len, *image_shape), 3, index)
    return moved.reshape(n, -1), direction


def frames(x: torch.Tensor, frame_dim: int) -> torch.Tensor:
    """Flat sequences (..., T * frame_dim) viewed as (..., T, frame_dim)."""
    return x.reshape(*x.shape[:-1], -1, frame_dim)


def motion_direction(
    before: torch.Tensor, after: torch.Tensor, image_shape: tuple[int, int] = (28, 28)
) -> torch.Tensor:
    """+1 where ``after`` (..., h * w) matches ``before`` shifted right by a pixel better than
    shifted left, else -1 (squared error, so it reads noisy or grey frames too)."""
    grid = before.reshape(*before.shape[:-1], *image_shape)
    errors = [
        (torch.roll(grid, shift, dims=-1).flatten(-2) - after).pow(2).sum(-1) for shift in (1, -1)
    ]
    return torch.where(errors[0] <= errors[1], 1, -1)
