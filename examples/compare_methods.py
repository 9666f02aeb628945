"""SVI (AEVB), variational EM and Monte Carlo EM as in Kingma and Welling (2014, Fig. 3).

    python examples/compare_methods.py                       # the defaults below, ~15 minutes
    python examples/compare_methods.py --epochs 5 --limit-train 200 --out runs/kw-quick

Defaults: a 1000-image subset of MNIST, 3 latent dimensions, one hidden layer of 100 units,
minibatches of 100, the estimated marginal log-likelihood (importance-weighted bound, 100
samples; for MCEM a Gaussian proposal fitted to HMC chains, see docs/mcem.md) on 500 training
and 500 test images every 5 epochs. Every flag of ``pyro-vae compare`` is accepted and
overrides a default. The output folder holds one run folder per method, ``comparison.png``
(curves against wall-clock seconds and against training examples seen) and
``comparison.md`` / ``.csv``.
"""

import sys

from pyro_vae.cli.main import compare_parser, run_cli, run_compare

KINGMA_WELLING = {
    "algo": [["svi", "em", "mcem"]],
    "z_dim": 3,
    "hidden_dims": [100],
    "limit_train": 1000,
    "limit_test": 500,
    "batch_size": 100,
    "lr": 3e-3,
    "epochs": 30,
    "eval_every": 5,
    "eval_limit": 500,
}


def main(argv: list[str] | None = None) -> int:
    parser = compare_parser(
        prog="compare_methods.py",
        description="Compare SVI, variational EM and Monte Carlo EM (Kingma-Welling setting).",
    )
    parser.set_defaults(**KINGMA_WELLING)
    args = parser.parse_args(argv)
    return run_cli(lambda: run_compare(args))


if __name__ == "__main__":
    sys.exit(main())
