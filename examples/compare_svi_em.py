"""Train SVI and variational EM on the same data, seed and model, and compare them.

    python examples/compare_svi_em.py --epochs 5 --limit-train 10000 --out runs/cmp
    python examples/compare_svi_em.py --e-rule converge fixed aggressive --val-size 1000

The same as ``pyro-vae compare``. Every run gets the same epochs over the data, i.e. the same
number of decoder updates; EM spends extra encoder updates in its E-steps. The output folder
holds one run folder per algorithm (``svi``, ``em-<rule>``), ``comparison.png`` (test ELBO
against wall-clock seconds and against epochs) and the table ``comparison.md`` / ``.csv``
(final test ELBO, its two terms, an importance-weighted bound, mutual information, updates,
seconds).
"""

import sys

from pyro_vae.cli.main import compare_parser, run_cli, run_compare


def main(argv: list[str] | None = None) -> int:
    args = compare_parser(
        prog="compare_svi_em.py", description="Compare SVI and variational EM."
    ).parse_args(argv)
    return run_cli(lambda: run_compare(args))


if __name__ == "__main__":
    sys.exit(main())
