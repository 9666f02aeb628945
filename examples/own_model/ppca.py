"""Probabilistic PCA (Tipping and Bishop 1999) written as plain Pyro programs.

    z ~ N(0, I_k),   x | z ~ N(W z + mu, sigma^2 I_d)          (the model: W, mu, sigma)
    q(z | x) = N(A x + b, diag s^2)                             (the guide: A, b, s)

The exact marginal is N(mu, W W^T + sigma^2 I), so the learned parameters' log-likelihood is
known in closed form, and so is its maximum (the Tipping-Bishop MLE from the sample
covariance's eigendecomposition): tests/test_user_models.py checks training against both.

Two forms of the same programs: the functions ``model`` and ``guide`` (from Python,
``pyro_vae.fit_program(model, guide, data)``), and the class ``PPCA`` (from the command line,
``--model 'examples/own_model/ppca.py:PPCA(latent_dim=2)'``).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

LATENT_DIM = 2


def model(x, latent_dim=LATENT_DIM):
    """p(z) p(x | z) with parameters W, mu and sigma in Pyro's parameter store."""
    d = x.shape[1]
    w = pyro.param("W", lambda: 0.1 * torch.randn(d, latent_dim))
    mu = pyro.param("mu", lambda: torch.zeros(d))
    sigma = pyro.param("sigma", lambda: torch.ones(()), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(latent_dim), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T + mu, sigma).to_event(1), obs=x)


def guide(x, latent_dim=LATENT_DIM):
    """q(z | x): a Gaussian whose mean is affine in x, with one learned scale per dimension."""
    d = x.shape[1]
    a = pyro.param("A", lambda: torch.zeros(latent_dim, d))
    b = pyro.param("b", lambda: torch.zeros(latent_dim))
    s = pyro.param("s", lambda: torch.ones(latent_dim), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ a.T + b, s).to_event(1))


class PPCA(nn.Module):
    """The same programs as a class, for ``--model``: its settings are its arguments."""

    def __init__(self, latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def model(self, x):
        model(x, self.latent_dim)

    def guide(self, x):
        guide(x, self.latent_dim)
