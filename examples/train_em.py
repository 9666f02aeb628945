"""Train a VAE on MNIST by variational EM: alternate encoder-only and decoder-only steps.

    python examples/train_em.py --epochs 5 --limit-train 10000          # converge E-steps
    python examples/train_em.py --e-rule fixed --e-steps 5 --out runs/em-k5
    python examples/train_em.py --e-rule aggressive --val-size 1000     # He et al. (2019)

Every flag of ``pyro-vae train`` works here (``--help`` lists them); ``--algo`` defaults to
``em``. The run folder is the same as SVI's (config.json, metrics.csv, checkpoint.pt, figures/),
and metrics.csv also counts encoder updates, decoder updates and this epoch's E-step steps.

What one run does (pyro_vae/runs/fit.py and pyro_vae/infer/em.py):

    e_adam = torch.optim.Adam(phi, lr=e_lr)      # encoder
    m_adam = torch.optim.Adam(theta, lr=m_lr)    # decoder, prior, likelihood
    for epoch in range(epochs):
        for x in shuffled minibatches:
            # E-step: raise the ELBO over phi with theta fixed, on x then fresh minibatches,
            # until the rule stops (K steps; or the windowed mean loss stops falling, <= e_max)
            repeat: (loss(vae.model, vae.guide, xb) / len(xb)).backward(inputs=phi); e_adam.step()
            # M-step: one step over theta with phi fixed
            (loss(vae.model, vae.guide, x) / len(x)).backward(inputs=theta); m_adam.step()
        log the test ELBO; save a checkpoint
"""

import sys

from pyro_vae import fit, summary_table
from pyro_vae.cli.main import parse_train_config, run_cli


def main(argv: list[str] | None = None) -> int:
    config = parse_train_config(
        argv, prog="train_em.py", description="Train a VAE by variational EM.", algo="em"
    )
    return run_cli(lambda: print(summary_table(fit(config))))


if __name__ == "__main__":
    sys.exit(main())
