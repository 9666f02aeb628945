"""The best epoch by validation ELBO: which checkpoint is kept as ``best.pt``, and when
``--early-stopping PATIENCE`` ends a run.

A run with a validation set (``--val-size N``) keeps, beside the last checkpoint, the checkpoint
of the epoch whose validation ELBO is the highest so far; with ``--early-stopping PATIENCE`` it
also stops once PATIENCE epochs in a row have not improved on that best. The validation set is
the only data that chooses: the test set never does. The tracker's state is plain data saved in
every checkpoint, so a resumed run stops where an uninterrupted one would.
"""

import math
from dataclasses import asdict, dataclass

__all__ = ["BestEpoch"]


@dataclass
class BestEpoch:
    """The best validation ELBO seen so far, its epoch, and the last epoch seen."""

    best_elbo: float = -math.inf
    best_epoch: int = 0
    last_epoch: int = 0

    def update(self, epoch: int, val_elbo: float | None) -> bool:
        """Record ``epoch``'s validation ELBO; True when it is a new best (an epoch without a
        finite validation ELBO never is)."""
        self.last_epoch = epoch
        if val_elbo is None or not math.isfinite(val_elbo) or val_elbo <= self.best_elbo:
            return False
        self.best_elbo, self.best_epoch = val_elbo, epoch
        return True

    def stale(self, patience: int | None) -> bool:
        """Whether ``patience`` epochs have passed since the best (never when None)."""
        return patience is not None and self.last_epoch - self.best_epoch >= patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
