"""Priors p(z) over the latent code, and the protocol a user-defined prior follows.

The prior protocol
------------------
A prior is an ``nn.Module`` whose ``forward()`` (no arguments) returns a Pyro distribution over
z with event shape ``(z_dim,)`` and empty batch shape. The model samples it inside
``pyro.plate("data")``, which broadcasts it over the batch (and over a particle plate in front
of it), so ``log_prob`` must accept z of shape (..., z_dim) and return shape (...).

- Parameters the prior owns (``nn.Parameter``) are model-side parameters theta: ``VAE``
  returns them from ``model_parameters()``, so SVI updates them with the decoder, EM updates them
  in the M-step and freezes them in the E-step. Constant tensors should be buffers, so that they
  follow ``.to(device)`` and are saved in checkpoints.
- A prior that needs the guide's networks (the VampPrior) receives the encoder at construction
  and must *not* register it as a submodule: the encoder's parameters are guide-side (phi) and
  would otherwise be listed twice, in both parameter groups.
- ``sample`` is only used to draw pictures (``VAE.sample``); training never needs ``rsample``
  because z always comes from the guide.

Which priors have a closed-form KL to the diagonal Gaussian guide (``--elbo meanfield``): only
:class:`StandardNormalPrior`. For the others torch has no registered KL, and Pyro's
``TraceMeanField_ELBO`` silently falls back to the Monte Carlo estimate log q(z|x) - log p(z) at
the sampled z; :func:`has_closed_form_kl` tells which case applies and ``build_vae``'s callers can
warn.

Built in, by their ``--prior`` spec (:data:`PRIORS`; keyword forms such as
``vamp(num_components=50, encoder_gradients=False)`` reach every constructor argument):

- ``normal``: N(0, I).
- ``mog:K``: a mixture of K diagonal Gaussians with learnable weights, means and scales.
- ``vamp:K``: the VampPrior (Tomczak and Welling 2018), p(z) = 1/K sum_k q(z | u_k) over K
  learnable pseudo-inputs u_k.
- ``flow:L``: N(0, I) pushed through L affine autoregressive transforms (a masked autoregressive
  flow; Papamakarios et al. 2017) from ``pyro.distributions.transforms``.

A prior of your own is named the same way (:mod:`pyro_vae.plugins`): ``my_priors:StudentT``,
``path/to/priors.py:StudentT(df=3)``, or a name an installed package adds to the entry-point
group ``pyro_vae.priors``. Its constructor receives, by parameter name, any of
:data:`PRIOR_CONTEXT`: ``z_dim``, ``data_dim`` and ``encoder``.
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import affine_autoregressive
from torch import nn

from pyro_vae.errors import UserError, check_count
from pyro_vae.plugins import build, check_spec

__all__ = [
    "PRIOR_HELP",
    "PRIORS",
    "PRIOR_CONTEXT",
    "StandardNormal",
    "StandardNormalPrior",
    "MixtureOfGaussiansPrior",
    "VampPrior",
    "FlowPrior",
    "check_prior_spec",
    "make_prior",
    "has_closed_form_kl",
]

PRIOR_HELP = (
    "normal, mog:K, vamp:K, flow:L (K components, L flow layers), a name an installed package "
    "adds, or your own: module:Class or path/to/file.py:Class, optionally with (key=value, ...)"
)
#: What a prior's constructor may ask for by parameter name.
PRIOR_CONTEXT = ("z_dim", "data_dim", "encoder")
LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # as torch.distributions.Normal writes it


class StandardNormal(dist.Normal):
    """N(0, 1) in every coordinate of ``template``'s shape: Pyro's ``Normal(0, 1)``, with the
    same sampling, KL and log-density to the last bit, but a log-density of two passes over z.

    torch's ``Normal.log_prob`` spends about eight passes on the tensors of loc and scale,
    which inside a particle plate are expanded to the full (particles, batch, z_dim): 3.2 ms of
    each 100 x 100 chunk of the log-likelihood against 0.3 ms for -z^2/2 - log(2 pi)/2.
    """

    def __init__(self, template: torch.Tensor, validate_args: bool | None = None) -> None:
        super().__init__(torch.zeros_like(template), torch.ones_like(template), validate_args)

    def expand(self, batch_shape, _instance=None) -> "StandardNormal":
        new = self._get_checked_instance(StandardNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # The operations of torch's formula with loc = 0 and scale = 1, so the same bits.
        log_p = value.square().mul_(-0.5).sub_(LOG_SQRT_2PI)
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I). Its KL to a diagonal Gaussian q(z|x) has a closed form."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        # Buffers follow the module across devices and are saved in checkpoints.
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        return StandardNormal(self.loc).to_event(1)


class MixtureOfGaussiansPrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2) with learnable pi, mu and sigma.

    Means start spread as N(0, I) draws, scales at 1 and weights uniform, so that at
    initialisation the prior is about as wide as N(0, I).
    """

    def __init__(self, z_dim: int, num_components: int) -> None:
        super().__init__()
        check_count(num_components, "mog: the number of components")
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, z_dim))
        self.raw_scales = nn.Parameter(torch.full((num_components, z_dim), math.log(math.e - 1)))

    def forward(self) -> dist.TorchDistribution:
        scales = F.softplus(self.raw_scales) + 1e-4
        components = dist.Normal(self.locs, scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(nn.Module):
    """The VampPrior, p(z) = (1/K) sum_k q_phi(z | u_k), over K learnable pseudo-inputs u_k.

    The pseudo-inputs are model-side parameters (theta); they pass through ``hardtanh`` into
    [0, 1], the data range, and start near 0.05 as in Tomczak and Welling's code. The encoder is
    the guide's own and stays guide-side: it is held by reference, not as a submodule.

    Gradients through the encoder (``encoder_gradients``): log p(z) depends on phi too. With
    the default ``True`` (the paper's choice) the encoder receives gradients from the prior term
    as well as from q(z|x), so SVI maximises the joint ELBO over (phi, theta). Variational EM
    then does block-coordinate ascent on that same ELBO: the E-step moves the encoder with the
    full gradient (which also moves p(z)); the M-step moves the pseudo-inputs and the decoder
    and leaves the encoder untouched. With ``False`` the prior uses the encoder's current
    weights as constants (a stop-gradient), so only q(z|x) trains the encoder and the prior
    changes only through its pseudo-inputs.
    """

    def __init__(
        self,
        encoder: nn.Module,
        data_dim: int,
        num_components: int,
        encoder_gradients: bool = True,
    ) -> None:
        super().__init__()
        check_count(num_components, "vamp: the number of pseudo-inputs")
        self._encoder = (encoder,)  # a tuple hides it from nn.Module: no parameters, no state
        self.encoder_gradients = encoder_gradients
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(num_components, data_dim))
        self.register_buffer("logits", torch.zeros(num_components))

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    def forward(self) -> dist.TorchDistribution:
        u = F.hardtanh(self.pseudo_inputs, 0.0, 1.0)
        if self.encoder_gradients:
            loc, scale = self.encoder(u)
        else:
            loc, scale = _call_without_parameter_gradients(self.encoder, u)
        components = dist.Normal(loc, scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


def _call_without_parameter_gradients(module: nn.Module, u: torch.Tensor):
    """module(u) with the module's parameters treated as constants (gradients still reach u)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = dict(module.named_buffers())
    return torch.func.functional_call(module, {**params, **buffers}, (u,))


class FlowPrior(nn.Module):
    """p(z): N(0, I) transformed by ``num_layers`` affine autoregressive layers.

    Each layer is Pyro's ``affine_autoregressive`` (a MADE network with a random variable order,
    a buffer saved in checkpoints) used in its inverse direction, so that log p(z) of a given z
    (what training evaluates, for z drawn from the guide) takes one network pass per layer,
    while sampling (only for pictures) takes z_dim sequential passes.
    """

    def __init__(
        self, z_dim: int, num_layers: int, hidden_dims: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        check_count(num_layers, "flow: the number of layers")
        if z_dim < 2:
            raise UserError("a flow prior needs --z-dim 2 or more (autoregressive layers)")
        hidden = list(hidden_dims or (4 * z_dim,))
        self.layers = nn.ModuleList(
            affine_autoregressive(z_dim, hidden_dims=hidden) for _ in range(num_layers)
        )
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, [layer.inv for layer in self.layers])


#: The built-in priors by ``--prior`` name.
PRIORS = {
    "normal": StandardNormalPrior,
    "mog": MixtureOfGaussiansPrior,
    "vamp": VampPrior,
    "flow": FlowPrior,
}


def check_prior_spec(spec: str) -> None:
    """Check a ``--prior`` spec (name, arguments, importability) without building it.

    ``"custom"`` stands for a prior module handed to :func:`pyro_vae.fit` in Python.
    """
    if spec != "custom":
        check_spec(spec, "prior", "--prior", PRIORS, PRIOR_CONTEXT, nn.Module)


def make_prior(spec: str, z_dim: int, encoder: nn.Module, data_dim: int) -> nn.Module:
    """Build a prior from its ``--prior`` spec (the VampPrior reuses ``encoder``)."""
    if spec == "custom":
        raise UserError(
            "this run's prior was a module given in Python: pass it again (prior=...), or train "
            "with --prior module:Class so that every command can rebuild it"
        )
    context = {"z_dim": z_dim, "data_dim": data_dim, "encoder": encoder}
    return build(spec, "prior", "--prior", PRIORS, context, expect=nn.Module)


def has_closed_form_kl(prior: nn.Module, z_dim: int) -> bool:
    """Whether torch knows KL(diagonal Gaussian || prior()) in closed form (``meanfield``)."""
    device = next(iter([*prior.parameters(), *prior.buffers()]), torch.zeros(())).device
    q = dist.Normal(torch.zeros(z_dim, device=device), torch.ones(z_dim, device=device))
    try:
        with torch.no_grad():
            torch.distributions.kl_divergence(q.to_event(1), prior())
    except NotImplementedError:
        return False
    return True
