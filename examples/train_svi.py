"""Train a VAE on MNIST by stochastic variational inference (SVI) with Pyro.

    python examples/train_svi.py                       # defaults: about 2-3 minutes on 2 CPU cores
    python examples/train_svi.py --elbo meanfield --z-dim 2 --epochs 5 --out runs/z2

Every flag of ``pyro-vae train`` works here (``--help`` lists them). The run folder gets
config.json, metrics.csv, checkpoint.pt and figures/ (reconstructions, samples, curves).

What one run does (pyro_vae/runs/fit.py and pyro_vae/infer/svi.py), with the model and guide of
pyro_vae/models/vae.py:

    vae = VAE(encoder, decoder, prior=N(0, I), likelihood=Bernoulli)
    loss = Trace_ELBO().differentiable_loss        # -ELBO, summed over the minibatch
    adam = torch.optim.Adam([{"params": phi}, {"params": theta}])
    for epoch in range(epochs):
        for x in shuffled minibatches of freshly binarized MNIST:
            adam.zero_grad()
            (loss(vae.model, vae.guide, x) / len(x)).backward()  # nats per data point
            adam.step()                                         # joint step on phi and theta
        log the test ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)); save a checkpoint
"""

import sys

from pyro_vae import fit, summary_table
from pyro_vae.cli.main import parse_train_config, run_cli


def main(argv: list[str] | None = None) -> int:
    config = parse_train_config(argv, prog="train_svi.py", description="Train a VAE by SVI.")
    return run_cli(lambda: print(summary_table(fit(config))))


if __name__ == "__main__":
    sys.exit(main())
