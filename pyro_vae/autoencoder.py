"""A plain deterministic autoencoder, the baseline the VAE is compared with.

    code = f(x),  reconstruction = g(f(x)),  loss = ||x - g(f(x))||^2   (summed over pixels)

No distributions, no prior, no Pyro: f and g are ordinary MLPs trained by Adam. What the VAE
adds (docs/extending.md): a stochastic code z ~ q(z|x) instead of the point f(x), a likelihood
p(x|z) instead of squared error (squared error is a Gaussian log-likelihood with fixed scale, up
to constants), and a prior p(z) whose KL term organises the code space, so that decoding z ~ p(z)
gives new data and the ELBO bounds log p(x). The autoencoder's codes have no distribution to
sample from. With no hidden layers and a linear output it spans the same subspace as PCA
(Baldi and Hornik 1989), which the tests use to check training.
"""

from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae.networks import mlp
from pyro_vae.svi import adam, epoch_loop, gradient_step

__all__ = ["Autoencoder", "train_autoencoder", "reconstruction_error"]


class Autoencoder(nn.Module):
    """f: D -> hidden -> code_dim and g: code_dim -> mirrored hidden -> D.

    ``sigmoid_output`` keeps reconstructions of images in [0, 1]; turn it off (and use
    ``hidden_dims=()``) for the linear autoencoder.
    """

    def __init__(
        self,
        data_dim: int,
        code_dim: int,
        hidden_dims: Sequence[int] = (400,),
        sigmoid_output: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = mlp(data_dim, hidden_dims, code_dim)
        self.decoder = mlp(code_dim, tuple(reversed(hidden_dims)), data_dim)
        if sigmoid_output:
            self.decoder.append(nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def reconstruction_error(model: Autoencoder, x: torch.Tensor) -> float:
    """Mean over data points of ||x - g(f(x))||^2."""
    with torch.no_grad():
        return (x - model(x)).pow(2).sum(-1).mean().item()


def train_autoencoder(
    model: Autoencoder,
    x: torch.Tensor,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Minimise ||x - g(f(x))||^2 by Adam over shuffled minibatches; the mean loss per epoch."""
    params = list(model.parameters())
    optimizer = adam(params, lr)

    def step(xb: torch.Tensor) -> torch.Tensor:
        loss = (xb - model(xb)).pow(2).sum()
        gradient_step(loss, xb.shape[0], params, [optimizer])
        return loss.detach()

    return [epoch_loop(step, x, batch_size, generator) for _ in range(epochs)]
