"""TD-VAE (Gregor et al. 2019, "Temporal Difference Variational Auto-Encoder") as Pyro programs,
with the paper's two layers of latents and several time pairs per sequence.

A sequence x_1..x_T is read by a belief network, b_t = LSTM(embedding(x_1..x_t)), whose state
summarises the past. The state z_t = (z^1_t, z^2_t) has two layers of ``--z-dim`` each, the
upper one (2) conditioning the lower one (1) everywhere. For a time pair t1 < t2, the jump
d = t2 - t1 drawn from 1..``--max-jump`` (fed to the networks as d / J):

    belief             p_B(z^2_t | b_t)              p_B(z^1_t | b_t, z^2_t)
    smoothing (phi)    q_S(z^2_t1 | z_t2, b_t1, b_t2, d)   q_S(z^1_t1 | z_t2, b_t1, b_t2, d, z^2_t1)
    transition (theta) p_T(z^2_t2 | z_t1, d)         p_T(z^1_t2 | z_t1, d, z^2_t2)
    decoder (theta)    p_D(x_t2 | z^1_t2, z^2_t2)

Model:  (t1, t2) ~ p(pair);  z_t1 ~ p_B(. | b_t1);  z_t2 ~ p_T(. | z_t1);  x_t2 ~ p_D(. | z_t2)
Guide:  (t1, t2) ~ p(pair);  z_t2 ~ p_B(. | b_t2);  z_t1 ~ q_S(. | z_t2, b_t1, b_t2)

(each z drawn upper layer first). Pyro's Trace_ELBO of one pair is the paper's loss (its eq. 8,
layer by layer):

    log p_D(x_t2 | z_t2) + log p_B(z_t1 | b_t1) + log p_T(z_t2 | z_t1)
        - log p_B(z_t2 | b_t2) - log q_S(z_t1 | z_t2, b_t1, b_t2),

with z_t2 and z_t1 drawn by the guide, reparameterized, and each log-density the sum of its two
layers'. Each sequence gets ``--time-pairs`` P pairs per step, drawn independently; the belief
LSTM runs once per sequence and the P pairs read its states. The pairs are the first event
dimension of every site (:class:`PairAverage`), whose log-density is the mean over the pairs: the
loss and the test ELBO are the one-pair bound averaged over P pairs (so they do not grow with P),
and every site stays one value per sequence inside ``pyro.plate("data")``, as the trainers and
evaluation expect. The pair site is in both programs with the same distribution (the jump
uniform in 1..J, then t1 uniform where t1 + jump fits), so its log-probabilities cancel.

Which side is which: the belief network (embedding, LSTM, p_B's heads) appears in both programs.
It is the filtering part of inference (b_t summarises x_1..x_t for the guide's q(z_t2) = p_B),
so it is guide-side (phi) with q_S; the model side (theta) is what generates: p_T and p_D. The
model reads p_B(z_t1 | b_t1) as a prior conditioned on the past computed by the guide's
network, as the VampPrior reads the encoder: SVI trains the belief network on both programs'
terms, variational EM's E-steps do, and its M-steps fit transition and decoder with the beliefs
fixed.

Checkpoints of the earlier one-layer TD-VAE (before issue 34) do not load into this model.
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

__all__ = ["TDVAE", "GaussianHead", "PairAverage", "time_pairs", "NOT_APPLICABLE"]

#: Why the standard metrics are left out for the TD-VAE (written to eval.json).
NOT_APPLICABLE = {
    "log_likelihood": "the TD-VAE bounds log p(x_t2 | x_<=t1) of one frame given the past, not "
    "log p(x) of a sequence; its test ELBO is that bound averaged over random time pairs",
    "reconstruction": "frames are predicted from the past, not reconstructed; see the rollout "
    "cross-entropies",
    "active_units": "the latent state changes along a sequence: no one code per data point",
    "mutual_info": "the guide's z_t1 depends on z_t2 and two beliefs, not on x alone",
}


class PairAverage(dist.Independent):
    """A distribution over (pairs, *event) per sequence: the base distribution's last
    ``reinterpreted_batch_ndims`` batch dimensions become the event, the first of them the
    time pairs, and the log-density is the mean over the pairs of each pair's log-density."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(value) / self.event_shape[0]


class GaussianHead(nn.Module):
    """input (..., in_dim) -> N(loc, diag scale^2) over (out_dim,), one hidden ReLU layer; with
    ``residual`` the loc is the input's first ``out_dim`` values plus the network's."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, residual: bool = False) -> None:
        super().__init__()
        self.net = mlp(in_dim, (hidden,), 2 * out_dim)
        self.out_dim, self.residual = out_dim, residual

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = self.net(h).chunk(2, dim=-1)
        if self.residual:
            loc = loc + h[..., : self.out_dim]
        return dist.Normal(loc, F.softplus(raw) + 1e-4)


class TwoLayers(nn.Module):
    """A distribution over a two-layer state (z^1, z^2) given an input h: z^2 ~ head2(h), then
    z^1 ~ head1(h, z^2). With ``residual``, h starts with the previous state (z^1, z^2) and each
    layer's mean is its previous value plus a learned change."""

    def __init__(self, in_dim: int, hidden: int, z_dim: int, residual: bool = False) -> None:
        super().__init__()
        self.z_dim, self.residual = z_dim, residual
        self.upper = GaussianHead(in_dim, hidden, z_dim)
        self.lower = GaussianHead(in_dim + z_dim, hidden, z_dim)

    def upper_dist(self, h: torch.Tensor) -> dist.Normal:
        """p(z^2 | h), batch shape (..., z_dim)."""
        d = self.upper(h)
        return (
            dist.Normal(d.loc + h[..., self.z_dim : 2 * self.z_dim], d.scale)
            if self.residual
            else d
        )

    def lower_dist(self, h: torch.Tensor, upper: torch.Tensor) -> dist.Normal:
        """p(z^1 | h, z^2), batch shape (..., z_dim)."""
        d = self.lower(torch.cat([h, upper], -1))
        return dist.Normal(d.loc + h[..., : self.z_dim], d.scale) if self.residual else d

    def sample(self, h: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """A state (..., 2 * z_dim) = (z^1, z^2) drawn upper layer first (its means if
        ``mean``)."""
        upper = self.upper_dist(h)
        upper = upper.mean if mean else upper.sample()
        lower = self.lower_dist(h, upper)
        return torch.cat([lower.mean if mean else lower.sample(), upper], -1)


def time_pairs(seq_len: int, max_jump: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (t1, t2), 0 <= t1 < t2 < T, t2 - t1 <= J, shape (P, 2), and its probability:
    the jump uniform in 1..J, then t1 uniform among the T - jump positions it fits."""
    pairs = [(t1, t1 + j) for j in range(1, max_jump + 1) for t1 in range(seq_len - j)]
    probs = [1.0 / (max_jump * (seq_len - (t2 - t1))) for t1, t2 in pairs]
    return torch.tensor(pairs), torch.tensor(probs)


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values (B, T, d) at times t (..., B, P) -> (..., B, P, d)."""
    return values[torch.arange(values.shape[0], device=t.device)[:, None], t]


class TDVAE(LatentModel):
    """The TD-VAE with two layers of latents and P time pairs per sequence (see the module
    docstring).

    Args:
        frame_dim: pixels per frame.
        seq_len: frames per sequence T.
        z_dim: size of each of the two layers of the latent state.
        hidden: width of every hidden layer, and of the frame embedding.
        belief_dim: size of the LSTM's state b_t.
        max_jump: J, the largest t2 - t1 in training.
        likelihood: p_D(x | z) of a frame (:mod:`pyro_vae.models.likelihoods`).
        pairs_per_sequence: P, the time pairs of each sequence in a step.
    """

    sequences = True
    own_fields = ("max_jump", "time_pairs")

    def __init__(
        self,
        frame_dim: int,
        seq_len: int,
        z_dim: int,
        hidden: int,
        belief_dim: int,
        max_jump: int,
        likelihood: nn.Module,
        pairs_per_sequence: int = 1,
    ) -> None:
        super().__init__()
        if max_jump < 1:
            raise UserError(f"--max-jump must be at least 1, got {max_jump}")
        if seq_len < max_jump + 1:
            raise UserError(f"--seq-len {seq_len} is too short for --max-jump {max_jump}")
        if pairs_per_sequence < 1:
            raise UserError(f"--time-pairs must be at least 1, got {pairs_per_sequence}")
        self.frame_dim, self.seq_len, self.max_jump = frame_dim, seq_len, max_jump
        self.z_dim, self.pairs_per_sequence = z_dim, pairs_per_sequence
        self.data_dim = frame_dim * seq_len
        state = 2 * z_dim
        # phi: the belief network and the smoothing posterior
        self.embedding = mlp(frame_dim, (hidden,), hidden)
        self.lstm = nn.LSTM(hidden, belief_dim, batch_first=True)
        self.belief = TwoLayers(belief_dim, hidden, z_dim)
        self.smoothing = TwoLayers(state + 2 * belief_dim + 1, hidden, z_dim)
        # theta: transition and decoder
        self.transition = TwoLayers(state + 1, hidden, z_dim, residual=True)
        out = getattr(likelihood, "params_per_dim", 1) * frame_dim
        self.decoder = mlp(state, (hidden, hidden), out)
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
        if config.time_pairs < 1:
            raise UserError(f"--time-pairs must be at least 1, got {config.time_pairs}")
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
        return cls(
            frame_dim,
            config.seq_len,
            config.z_dim,
            width,
            width,
            config.max_jump,
            lik,
            config.time_pairs,
        )

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
        """The time pair site (inside the data plate, P pairs per sequence as its event): t1,
        t2 (..., B, P) and the jump feature (..., B, P, 1)."""
        choice = dist.Categorical(probs=self.pair_probs).expand(
            [x.shape[0], self.pairs_per_sequence]
        )
        index = pyro.sample("pair", PairAverage(choice, 1))
        t1, t2 = self.pairs[index].unbind(-1)
        return t1, t2, ((t2 - t1).to(x.dtype) / self.max_jump).unsqueeze(-1)

    @staticmethod
    def _sample(name: str, d: dist.Normal) -> torch.Tensor:
        """A latent site of one layer: (..., B, P, z_dim), the pairs and z in the event."""
        return pyro.sample(name, PairAverage(d, 2))

    def _state(self, prefix: str, heads: TwoLayers, h: torch.Tensor) -> torch.Tensor:
        """Sites ``{prefix}_upper`` then ``{prefix}_lower`` drawn from ``heads`` given h; the
        state (z^1, z^2)."""
        upper = self._sample(f"{prefix}_upper", heads.upper_dist(h))
        lower = self._sample(f"{prefix}_lower", heads.lower_dist(h, upper))
        return torch.cat([lower, upper], -1)

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """p_B(z_t1 | b_t1) p_T(z_t2 | z_t1) p_D(x_t2 | z_t2) for P random pairs per sequence."""
        self.register_modules("transition", "decoder", "likelihood")
        b = self._shared_beliefs(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            t1, t2, jump = self._pair(x)
            z1 = self._state("z1", self.belief, _at(b, t1))
            z2 = self._state("z2", self.transition, torch.cat([z1, jump], -1))
            x2 = _at(frames(x, self.frame_dim), t2)
            pyro.sample("x", PairAverage(self.likelihood(self.decoder(z2)), 1), obs=x2)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """p_B(z_t2 | b_t2), then q_S(z_t1 | z_t2, b_t1, b_t2), upper layers first."""
        self.register_modules("embedding", "lstm", "belief", "smoothing")
        b = self.beliefs(x)
        self._guide_beliefs = (x, b)
        with pyro.plate("data", x.shape[0], dim=-1):
            t1, t2, jump = self._pair(x)
            b1, b2 = _at(b, t1), _at(b, t2)
            z2 = self._state("z2", self.belief, b2)
            self._state("z1", self.smoothing, torch.cat([z2, b1, b2, jump], -1))

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
        """The belief's mean state (z^1, z^2) after each whole sequence, shape (N, 2 z_dim)."""
        return self.belief.sample(self.beliefs(x)[:, -1], mean=True)

    def _context_frames(self, context: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``context`` as frames (B, t0, frame_dim) and the shape of one output frame, or a
        one-line :class:`UserError` (see :meth:`rollout`)."""
        d = self.frame_dim
        if not isinstance(context, torch.Tensor) or not context.is_floating_point():
            raise UserError("the context must be a floating-point torch.Tensor of frames")
        shape = tuple(context.shape)
        if context.numel() == 0:
            raise UserError(f"the context of shape {shape} holds no frames")
        if context.dim() == 1 and shape[0] % d == 0:  # one flat sequence
            seq, frame = context.reshape(1, -1, d), (d,)
        elif context.dim() == 2 and shape[1] % d == 0:  # flat sequences (B, t0 * d)
            seq, frame = context.reshape(shape[0], -1, d), (d,)
        elif context.dim() == 3 and shape[2] == d:  # (B, t0, d)
            seq, frame = context, (d,)
        elif context.dim() == 3 and shape[1] * shape[2] == d:  # one sequence (t0, h, w)
            seq, frame = context.reshape(1, shape[0], d), shape[1:]
        elif context.dim() == 4 and shape[2] * shape[3] == d:  # (B, t0, h, w)
            seq, frame = context.reshape(shape[0], shape[1], d), shape[2:]
        else:
            raise UserError(
                f"context of shape {shape} is not frames of {d} pixels: give (B, t0 * {d}), "
                f"(B, t0, {d}), (B, t0, h, w), or one sequence (t0 * {d},) or (t0, h, w)"
            )
        if seq.shape[1] > self.seq_len:
            raise UserError(
                f"a context of {seq.shape[1]} frames is longer than the model's sequences "
                f"({self.seq_len} frames)"
            )
        if not torch.isfinite(seq).all():
            raise UserError("the context contains NaN or infinite values")
        try:
            self.likelihood.check_data(seq)
        except UserError as exc:
            raise UserError(f"the context's frames do not fit the decoder: {exc}") from None
        return seq, frame

    @torch.no_grad()
    def rollout(
        self,
        context: torch.Tensor,
        steps: int,
        samples: int = 1,
        jump: int = 1,
        mean: bool = False,
        states: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predicted frames after a context: z ~ p_B(. | b) of the context's last frame, then
        ``steps`` transitions p_T of ``jump`` frames each, each state decoded to the mean of
        p_D.

        ``context``: sequences of t0 <= T frames as (B, t0 * D) flat, (B, t0, D) or
        (B, t0, h, w), or a single sequence as (t0 * D,) or (t0, h, w). ``mean``: the means of
        p_B and p_T instead of draws (one deterministic rollout). Returns the frames
        (samples, B, steps, *frame), a frame shaped as in ``context`` and without B for a
        single sequence; with ``states`` also the latent states (z^1, z^2) the frames were
        decoded from, (samples, B, steps, 2 z_dim) likewise. Wrong shapes, ``steps`` or
        ``samples`` below 1, a jump outside 1..J, a context longer than T frames or frames
        outside the decoder's support are one-line :class:`UserError`.
        """
        if not 1 <= jump <= self.max_jump:
            raise UserError(f"a jump of {jump} frames: the model was trained on 1..{self.max_jump}")
        if steps < 1 or samples < 1:
            raise UserError(f"steps and samples must be at least 1, got {steps} and {samples}")
        seq, frame = self._context_frames(context)
        single = context.dim() == 1 or (context.dim() == 3 and frame != (self.frame_dim,))
        b = self.lstm(self.embedding(seq))[0][:, -1]
        z = self.belief.sample(b.expand(samples, *b.shape), mean=mean)
        feature = z.new_full((*z.shape[:-1], 1), jump / self.max_jump)
        predicted, visited = [], []
        for _ in range(steps):
            z = self.transition.sample(torch.cat([z, feature], -1), mean=mean)
            visited.append(z)
            predicted.append(self.likelihood.mean(self.decoder(z)))
        out = torch.stack(predicted, dim=-2).reshape(samples, seq.shape[0], steps, *frame)
        zs = torch.stack(visited, dim=-2)
        if single:
            out, zs = out[:, 0], zs[:, 0]
        return (out, zs) if states else out
