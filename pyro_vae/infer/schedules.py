"""Learning-rate schedules over epochs (``--lr-schedule``), built on ``torch.optim.lr_scheduler``.

- ``constant``: the base learning rate ``--lr`` throughout (the default).
- ``burda``: Burda et al. (2016), section 5: 3^i epochs at ``lr * 10^(-i/7)`` for i = 0..7,
  3280 epochs in all (their lr is 1e-3); later epochs keep the last rate.
- ``cosine``: cosine annealing, ``lr * (1 + cos(pi * n / E)) / 2`` in the epoch after n
  completed ones, towards 0 at the run's ``--epochs`` E (resuming with a larger ``--epochs``
  stretches the curve to the new end, so the rate rises at that point).
- ``plateau``: the rate halves when the validation ELBO has not improved for
  :data:`PLATEAU_PATIENCE` epochs (``ReduceLROnPlateau``, mode ``max``); needs ``--val-size``.

One scheduler per optimizer (SVI has one, variational EM an E-step and an M-step optimizer, each
scaled by the same factor). The schedule steps once after every epoch, and its state is plain
data saved in the checkpoint, so a resumed run continues with the same rates.
"""

import math

import torch
from torch.optim import lr_scheduler

__all__ = ["SCHEDULES", "FIXED_SCHEDULES", "PLATEAU_PATIENCE", "burda_factor", "EpochSchedule"]

SCHEDULES = ("constant", "burda", "cosine", "plateau")
#: The schedules that follow the epoch count alone (plateau watches a validation ELBO).
FIXED_SCHEDULES = ("constant", "burda", "cosine")
PLATEAU_PATIENCE = 10
BURDA_STAGES = 8  # i = 0..7


def burda_factor(epochs_done: int) -> float:
    """The factor on the base rate for the epoch after ``epochs_done`` completed ones: 10^(-i/7)
    in stage i, which lasts 3^i epochs (stage 0: epoch 1; stage 1: epochs 2-4; ...)."""
    stage, end = 0, 1
    while epochs_done >= end and stage < BURDA_STAGES - 1:
        stage += 1
        end += 3**stage
    return 10 ** (-stage / 7)


def _scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int):
    if name == "burda":
        return lr_scheduler.LambdaLR(optimizer, burda_factor)
    if name == "cosine":
        return lr_scheduler.LambdaLR(optimizer, lambda n: (1 + math.cos(math.pi * n / epochs)) / 2)
    if name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=PLATEAU_PATIENCE
        )
    raise ValueError(f"unknown schedule {name!r}")


class EpochSchedule:
    """The learning rates of a run's optimizers over epochs; ``step`` after every epoch."""

    def __init__(self, name: str, optimizers: list[torch.optim.Optimizer], epochs: int) -> None:
        self.name = name
        self.optimizers = optimizers
        self.schedulers = (
            []
            if name == "constant"
            else [_scheduler(name, optimizer, epochs) for optimizer in optimizers]
        )

    def step(self, val_elbo: float | None = None) -> None:
        """Advance one epoch; ``plateau`` watches ``val_elbo`` (an epoch without one, or with a
        non-finite one, leaves the rate as it is)."""
        for scheduler in self.schedulers:
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                if val_elbo is not None and math.isfinite(val_elbo):
                    scheduler.step(val_elbo)
            else:
                scheduler.step()

    def lr(self) -> float:
        """The current rate of the first optimizer's first group (for metrics.csv)."""
        return float(self.optimizers[0].param_groups[0]["lr"])

    def state_dict(self) -> list[dict]:
        return [scheduler.state_dict() for scheduler in self.schedulers]

    def load_state_dict(self, states: list[dict]) -> None:
        for scheduler, state in zip(self.schedulers, states, strict=True):
            scheduler.load_state_dict(state)
