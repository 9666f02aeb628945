"""Trains through the library's API and saves this rank's parameters: run by
tests/test_distributed.py under torchrun (one process per rank) or alone (one process).

    python tests/distributed_worker.py [--noiseless] TRAINING FLAGS ...

writes ``OUT/rank<r>.pt`` with the VAE's parameters and each epoch's training loss.
``--noiseless`` replaces every sample of the guide by its mean (z = loc(x)), which makes the
loss a deterministic function of the parameters and the minibatch: runs that draw different
reparameterization noise (one process, or several with per-rank noise) can then be compared.
"""

import sys
from pathlib import Path

import torch
from pyro.poutine.messenger import Messenger

from pyro_vae import distributed
from pyro_vae.cli.main import parse_train_config
from pyro_vae.runs.fit import setup, train_one_epoch


class GuideMean(Messenger):
    """Every reparameterized latent sample takes its distribution's mean instead of a draw."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["fn"].has_rsample:  # not a plate's subsample site
            msg["value"] = msg["fn"].mean


def main(argv: list[str]) -> None:
    noiseless = "--noiseless" in argv
    config = parse_train_config([a for a in argv if a != "--noiseless"])
    data, vae, trainer, data_rng = setup(config)
    if noiseless:
        loss = trainer.objective
        trainer.objective = lambda model, guide, x, w: loss(model, GuideMean()(guide), x, w)
    losses = [
        train_one_epoch(config, data, vae, trainer, data_rng, epoch)["train_loss"]
        for epoch in range(1, config.epochs + 1)
    ]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    compiled = getattr(trainer, "compiled", None)
    graphs = len(compiled._graphs) if compiled is not None else 0  # graphs the steps replayed
    saved = {"vae": vae.state_dict(), "losses": losses, "compiled_graphs": graphs}
    torch.save(saved, out / f"rank{distributed.rank()}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
