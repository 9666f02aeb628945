"""TD-VAE (Gregor et al. 2019, "Temporal Difference Variational Auto-Encoder") as Pyro programs.

A sequence x_1..x_T is read by a belief network, b_t = LSTM(embedding(x_1..x_t)), whose state
summarises the past. One layer of latents z (``--z-dim``), and for a time pair t1 < t2 with the
jump t2 - t1 drawn from 1..``--max-jump``:

    belief distribution      p_B(z | b_t)
    transition               p_T(z_t2 | z_t1, t2 - t1)       (theta)
    decoder                  p_D(x_t2 | z_t2)                (theta)
    smoothing posterior      q_S(z_t1 | z_t2, b_t1, b_t2)    (phi)

Model:  (t1, t2) ~ p(pair);  z_t1 ~ p_B(. | b_t1);  z_t2 ~ p_T(. | z_t1);  x_t2 ~ p_D(. | z_t2)
Guide:  (t1, t2) ~ p(pair);  z_t2 ~ p_B(. | b_t2);  z_t1 ~ q_S(. | z_t2, b_t1, b_t2)

Pyro's Trace_ELBO of this pair, for one sequence, is the paper's loss (its eq. 8, one layer):

    log p_D(x_t2 | z_t2) + log p_B(z_t1 | b_t1) + log p_T(z_t2 | z_t1)
        - log p_B(z_t2 | b_t2) - log q_S(z_t1 | z_t2, b_t1, b_t2),

with z_t2 and z_t1 drawn by the guide, reparameterized. The time pair is a site of both programs
with the same distribution (the jump uniform in 1..J, then t1 uniform where t1 + jump fits), so
its log-probabilities cancel and the guide's draw is the pair the model scores. The transition
and the smoothing posterior see the jump (as jump / J), so one network serves jumps of every
size, and the transition's mean is z_t1 plus a learned change.

Which side is which: the belief network (embedding, LSTM, p_B's head) appears in both programs.
It is the filtering part of inference (b_t summarises x_1..x_t for the guide's q(z_t2) = p_B),
so it is guide-side (phi) with q_S; the model side (theta) is what generates: p_T and p_D. The
model reads p_B(z_t1 | b_t1) as a prior conditioned on the past computed by the guide's
network, as the VampPrior reads the encoder: SVI trains the belief network on both programs'
terms, variational EM's E-steps do, and its M-steps fit transition and decoder with the beliefs
fixed.
"""

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.data.sequences import frames
from pyro_vae.errors import UserError
from pyro_vae.models.base import LatentModel, check_flat_data, refuse_flags
from pyro_vae.models.likelihoods import make_likelihood
from pyro_vae.models.networks import mlp

__all__ = ["TDVAE", "GaussianHead", "time_pairs", "NOT_APPLICABLE"]

#: Why the standard metrics are left out for the TD-VAE (written to eval.json).
NOT_APPLICABLE = {
    "log_likelihood": "the TD-VAE bounds log p(x_t2 | x_<=t1) of one frame given the past, not "
    "log p(x) of a sequence; its test ELBO is that bound for a random time pair",
    "reconstruction": "frames are predicted from the past, not reconstructed; see the rollout "
    "cross-entropies",
    "active_units": "the latent state changes along a sequence: no one code per data point",
    "mutual_info": "the guide's z_t1 depends on z_t2 and two beliefs, not on x alone",
}


class GaussianHead(nn.Module):
    """input (..., in_dim) -> N(loc, diag scale^2) over (out_dim,), one hidden ReLU layer; with
    ``residual_dims`` the loc is the input's first ``out_dim`` values plus the network's."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, residual: bool = False) -> None:
        super().__init__()
        self.net = mlp(in_dim, (hidden,), 2 * out_dim)
        self.out_dim, self.residual = out_dim, residual

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = self.net(h).chunk(2, dim=-1)
        if self.residual:
            loc = loc + h[..., : self.out_dim]
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)


def time_pairs(seq_len: int, max_jump: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (t1, t2), 0 <= t1 < t2 < T, t2 - t1 <= J, shape (P, 2), and its probability:
    the jump uniform in 1..J, then t1 uniform among the T - jump positions it fits."""
    pairs = [(t1, t1 + j) for j in range(1, max_jump + 1) for t1 in range(seq_len - j)]
    probs = [1.0 / (max_jump * (seq_len - (t2 - t1))) for t1, t2 in pairs]
    return torch.tensor(pairs), torch.tensor(probs)


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values (B, T, d) at times t (..., B) -> (..., B, d)."""
    return values[torch.arange(values.shape[0], device=t.device), t]


class TDVAE(LatentModel):
    """The TD-VAE with one layer of latents (see the module docstring).

    Args:
        frame_dim: pixels per frame.
        seq_len: frames per sequence T.
        z_dim: size of the latent state.
        hidden: width of every hidden layer, and of the frame embedding.
        belief_dim: size of the LSTM's state b_t.
        max_jump: J, the largest t2 - t1 in training.
        likelihood: p_D(x | z) of a frame (:mod:`pyro_vae.models.likelihoods`).
    """

    sequences = True
    own_fields = ("max_jump",)

    def __init__(
        self,
        frame_dim: int,
        seq_len: int,
        z_dim: int,
        hidden: int,
        belief_dim: int,
        max_jump: int,
        likelihood: nn.Module,
    ) -> None:
        super().__init__()
        if max_jump < 1:
            raise UserError(f"--max-jump must be at least 1, got {max_jump}")
        if seq_len < max_jump + 1:
            raise UserError(f"--seq-len {seq_len} is too short for --max-jump {max_jump}")
        self.frame_dim, self.seq_len, self.max_jump = frame_dim, seq_len, max_jump
        self.z_dim = z_dim
        self.data_dim = frame_dim * seq_len
        # phi: the belief network and the smoothing posterior
        self.embedding = nn.Sequential(nn.Linear(frame_dim, hidden), nn.ReLU())
        self.lstm = nn.LSTM(hidden, belief_dim, batch_first=True)
        self.belief = GaussianHead(belief_dim, hidden, z_dim)
        self.smoothing = GaussianHead(z_dim + 2 * belief_dim + 1, hidden, z_dim)
        # theta: transition and decoder
        self.transition = GaussianHead(z_dim + 1, hidden, z_dim, residual=True)
        out = getattr(likelihood, "params_per_dim", 1) * frame_dim
        self.decoder = mlp(z_dim, (hidden,), out)
        self.likelihood = likelihood
        pairs, probs = time_pairs(seq_len, max_jump)
        self.register_buffer("pairs", pairs, persistent=False)
        self.register_buffer("pair_probs", probs, persistent=False)
        self._guide_beliefs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.figures = ("rollouts",)
        self.metrics = ("elbo", "rollouts")
        self.not_applicable = dict(NOT_APPLICABLE)

    # --- the run system ------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Refuse the VAE's flags, and jumps the sequences cannot hold."""
        if config.max_jump < 1:
            raise UserError(f"--max-jump must be at least 1, got {config.max_jump}")
        if config.seq_len < config.max_jump + 1:
            raise UserError(
                f"--seq-len {config.seq_len} is too short for --max-jump {config.max_jump}: "
                f"a time pair needs t2 - t1 <= {config.max_jump} frames apart"
            )
        refusals = [
            (config.prior != "normal", f"--prior {config.prior}", "its prior is p_B(z | b)"),
            (config.beta != 1.0 or config.kl_warmup != 0.0, "--beta / --kl-warmup", "not built"),
            (
                config.elbo != "trace" or config.num_particles != 1,
                f"--elbo {config.elbo} --num-particles {config.num_particles}",
                "it trains on Trace_ELBO, the paper's loss",
            ),
            (config.algo == "mcem", "--algo mcem", "it needs its guide"),
            (config.arch != "mlp", f"--arch {config.arch}", "its networks are MLPs and an LSTM"),
            (
                config.activation != "relu",
                f"--activation {config.activation}",
                "its networks have fixed nonlinearities",
            ),
            (
                config.encoder is not None or config.decoder is not None,
                "--encoder / --decoder",
                "its networks are MLPs and an LSTM",
            ),
            (config.corrupt is not None, "--corrupt", "not built for sequences"),
            (
                config.algo == "em" and config.e_rule == "aggressive",
                "--e-rule aggressive",
                "it watches a mutual information the TD-VAE does not have",
            ),
        ]
        refuse_flags("tdvae", refusals)

    @classmethod
    def from_config(
        cls, config, data_dim: int, image_shape: tuple[int, int], prior: nn.Module | None = None
    ) -> "TDVAE":
        """The TD-VAE of ``--model tdvae``: hidden width and belief size ``hidden_dims[0]``."""
        if prior is not None:
            raise UserError("--model tdvae has no prior module to replace")
        frame_dim = data_dim // config.seq_len
        lik = make_likelihood(config.likelihood, frame_dim, config.gaussian_scale)
        width = config.hidden_dims[0]
        return cls(frame_dim, config.seq_len, config.z_dim, width, width, config.max_jump, lik)

    # --- the two Pyro programs -------------------------------------------------------------
    def beliefs(self, x: torch.Tensor) -> torch.Tensor:
        """b_1..b_T of flat sequences x (B, T * frame_dim), shape (B, T, belief_dim)."""
        b, _ = self.lstm(self.embedding(frames(x, self.frame_dim)))
        return b

    def _shared_beliefs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's beliefs: those the guide just computed for this very ``x`` (Pyro's ELBOs
        and :mod:`pyro_vae.infer.traces` run the guide first, with no update in between), used
        once; otherwise computed afresh. Saves one LSTM pass per step."""
        cached, self._guide_beliefs = self._guide_beliefs, None
        return cached[1] if cached is not None and cached[0] is x else self.beliefs(x)

    def _pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The time pair site (inside the data plate): t1, t2 and the jump feature (..., B, 1)."""
        index = pyro.sample("pair", dist.Categorical(probs=self.pair_probs))
        t1, t2 = self.pairs[index].unbind(-1)
        return t1, t2, ((t2 - t1).to(x.dtype) / self.max_jump).unsqueeze(-1)

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """p_B(z_t1 | b_t1) p_T(z_t2 | z_t1) p_D(x_t2 | z_t2) for a random pair per sequence."""
        self.register_modules("transition", "decoder", "likelihood")
        b = self._shared_beliefs(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            t1, t2, jump = self._pair(x)
            z1 = pyro.sample("z1", self.belief(_at(b, t1)))
            z2 = pyro.sample("z2", self.transition(torch.cat([z1, jump], -1)))
            x2 = _at(frames(x, self.frame_dim), t2)
            pyro.sample("x", self.likelihood(self.decoder(z2)), obs=x2)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """p_B(z_t2 | b_t2), then q_S(z_t1 | z_t2, b_t1, b_t2)."""
        self.register_modules("embedding", "lstm", "belief", "smoothing")
        b = self.beliefs(x)
        self._guide_beliefs = (x, b)
        with pyro.plate("data", x.shape[0], dim=-1):
            t1, t2, jump = self._pair(x)
            b1, b2 = _at(b, t1), _at(b, t2)
            z2 = pyro.sample("z2", self.belief(b2))
            pyro.sample("z1", self.smoothing(torch.cat([z2, b1, b2, jump], -1)))

    # --- parameter groups ------------------------------------------------------------------
    def guide_parameters(self) -> Iterator[nn.Parameter]:
        """phi: the belief network (embedding, LSTM, p_B) and the smoothing posterior q_S."""
        for module in (self.embedding, self.lstm, self.belief, self.smoothing):
            yield from module.parameters()

    def model_parameters(self) -> Iterator[nn.Parameter]:
        """theta: the transition p_T, the decoder p_D and the likelihood."""
        for module in (self.transition, self.decoder, self.likelihood):
            yield from module.parameters()

    # --- data, codes and rollouts --------------------------------------------------------------
    def check_data(self, x: torch.Tensor) -> None:
        """Flat sequences (N, T * frame_dim) in the likelihood's support."""
        check_flat_data(x, self.data_dim, self.likelihood)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The belief mean E[z | b_T] after each whole sequence, shape (N, z_dim)."""
        return self.belief(self.beliefs(x)[:, -1]).mean

    @torch.no_grad()
    def rollout(
        self, context: torch.Tensor, steps: int, samples: int = 1, jump: int = 1
    ) -> torch.Tensor:
        """Predicted frames after a context: z ~ p_B(. | b) of the context's last frame, then
        ``steps`` transitions of ``jump`` frames each; the means of p_D, shape
        (samples, B, steps, frame_dim). ``context``: flat sequences (B, t0 * frame_dim)."""
        if not 1 <= jump <= self.max_jump:
            raise UserError(f"a jump of {jump} frames: the model was trained on 1..{self.max_jump}")
        b = self.lstm(self.embedding(frames(context, self.frame_dim)))[0][:, -1]
        z = self.belief(b).sample((samples,))
        feature = z.new_full((*z.shape[:-1], 1), jump / self.max_jump)
        predicted = []
        for _ in range(steps):
            z = self.transition(torch.cat([z, feature], -1)).sample()
            predicted.append(self.likelihood.mean(self.decoder(z)))
        return torch.stack(predicted, dim=-2)
