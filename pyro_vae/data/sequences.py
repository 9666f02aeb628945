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

__all__ = ["moving_digits", "frames", "shift_order", "best_shift", "roll_frames"]


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


def shift_order(width: int) -> list[int]:
    """Every horizontal shift of a ``width``-pixel image once (modulo the width), smallest
    magnitude first: 0, 1, -1, 2, -2, ..."""
    order = [0]
    for k in range(1, width // 2 + 1):
        order += [k] if 2 * k == width else [k, -k]
    return order


def best_shift(
    reference: torch.Tensor, target: torch.Tensor, image_shape: tuple[int, int] = (28, 28)
) -> torch.Tensor:
    """The horizontal shift s (pixels, + is right, wrapping around the edge, |s| <= w / 2) for
    which ``reference`` (..., h * w) rolled by s best matches ``target`` (..., h * w), the two
    broadcast against each other: the least squared error, which is the largest correlation
    since rolling keeps the norm, so it reads grey or noisy frames too. Ties go to the smallest
    |s|: a blank or horizontally uniform target gives 0, no motion."""
    h, w = image_shape
    ref = reference.reshape(*reference.shape[:-1], h, w)
    tgt = target.reshape(*target.shape[:-1], h, w)
    shifts = shift_order(w)
    scores = torch.stack([(torch.roll(ref, s, dims=-1) * tgt).sum((-2, -1)) for s in shifts], -1)
    return torch.tensor(shifts, device=scores.device)[scores.argmax(-1)]


def roll_frames(
    x: torch.Tensor, shift: torch.Tensor, image_shape: tuple[int, int] = (28, 28)
) -> torch.Tensor:
    """Frames ``x`` (..., h * w) each rolled right by its own ``shift`` (...,) pixels
    (broadcast against x's leading dimensions), wrapping around the edge."""
    h, w = image_shape
    grid = x.reshape(*x.shape[:-1], h, w)
    shift = shift.expand(grid.shape[:-2])
    column = torch.arange(w, device=x.device)
    source = (column - shift[..., None]) % w  # (..., w): output column c reads column c - s
    index = source[..., None, :].expand(grid.shape)
    return torch.gather(grid, -1, index).reshape(x.shape)
