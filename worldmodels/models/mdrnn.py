"""M: the MDN-RNN. An LSTM over [z_t, a_t] whose heads predict p(z_{t+1}), the reward and the done logit.

As in Ha & Schmidhuber (2018), every latent dimension has its *own* mixture of K Gaussians
(log pi, mu, log sigma, each (..., Z, K)); ctallec's port shares one mixture across dimensions,
which is a different model. The single linear head writes, per time step, a vector laid out as
``[pi logits (Z*K) | mu (Z*K) | log sigma (Z*K) | reward | done logit]``.

``forward`` runs ``torch.nn.LSTM`` over sequences; ``step`` runs one step with a plain matmul form of
the same weights (what the dream and the controller use), so both give the same numbers.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.errors import WorldModelsError

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
State = tuple[torch.Tensor, torch.Tensor]


class MDRNNOutput(NamedTuple):
    logpi: torch.Tensor  # (..., Z, K), log-softmax over K
    mu: torch.Tensor  # (..., Z, K)
    logsigma: torch.Tensor  # (..., Z, K)
    reward: torch.Tensor  # (...)
    done_logit: torch.Tensor  # (...)


class MDRNN(nn.Module):
    """LSTM(z_dim + action_dim -> hidden) with a per-dimension Gaussian-mixture head, reward and done heads."""

    def __init__(self, z_dim: int, action_dim: int, hidden: int = 256, n_gaussians: int = 5, dropout: float = 0.0):
        """``dropout``: in training, the rate of variational dropout on the LSTM's output before the head
        (one mask per sequence), so that a dream can draw a different M per member (docs/mdrnn.md)."""
        super().__init__()
        if min(z_dim, action_dim, hidden, n_gaussians) <= 0:
            raise WorldModelsError("MDRNN sizes must be positive: "
                                   f"z_dim={z_dim} action_dim={action_dim} hidden={hidden} n_gaussians={n_gaussians}")
        if not 0 <= dropout < 1:
            raise WorldModelsError(f"MDRNN dropout must be in [0, 1), got {dropout}")
        self.z_dim, self.action_dim, self.hidden, self.n_gaussians = z_dim, action_dim, hidden, n_gaussians
        self.dropout = float(dropout)
        self.lstm = nn.LSTM(z_dim + action_dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3 * z_dim * n_gaussians + 2)

    @property
    def config(self) -> dict[str, int | float]:
        """Constructor arguments (stored in checkpoints; older ones without ``dropout`` load with 0)."""
        return {"z_dim": self.z_dim, "action_dim": self.action_dim, "hidden": self.hidden,
                "n_gaussians": self.n_gaussians, "dropout": self.dropout}

    def initial_state(self, batch: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> State:
        w = self.lstm.weight_hh_l0
        zeros = torch.zeros(batch, self.hidden, device=device or w.device, dtype=dtype or w.dtype)
        return zeros, zeros.clone()

    def split_head(self, out: torch.Tensor) -> MDRNNOutput:
        """Cut the head's raw output (..., 3ZK+2) into an :class:`MDRNNOutput` (log pi normalised)."""
        z, k = self.z_dim, self.n_gaussians
        zk = z * k
        lead = out.shape[:-1]
        logits = out[..., :zk].reshape(*lead, z, k)
        mu = out[..., zk:2 * zk].reshape(*lead, z, k)
        logsigma = out[..., 2 * zk:3 * zk].reshape(*lead, z, k)
        return MDRNNOutput(F.log_softmax(logits, dim=-1), mu, logsigma, out[..., 3 * zk], out[..., 3 * zk + 1])

    def forward(self, z: torch.Tensor, a: torch.Tensor, state: State | None = None,
                generator: torch.Generator | None = None) -> tuple[MDRNNOutput, State]:
        """z (B, T, Z), a (B, T, A) -> (outputs with shapes (B, T, ...), final state ((B, H), (B, H))).

        In training with ``dropout`` > 0, the head reads y * mask / (1 - p) with one mask per sequence for
        all time steps (variational dropout: one draw is one M for a whole episode, as a dream member uses
        it), drawn from ``generator``; the recurrence keeps the unmasked state.
        """
        x = torch.cat([z, a.to(z.dtype)], dim=-1)  # (B, T, Z+A)
        lstm_state = None if state is None else (state[0].unsqueeze(0).contiguous(), state[1].unsqueeze(0).contiguous())
        y, (h, c) = self.lstm(x, lstm_state)  # y (B, T, H)
        if self.training and self.dropout > 0:
            keep = torch.empty(y.shape[0], 1, y.shape[2], device=y.device, dtype=y.dtype)
            y = y * keep.bernoulli_(1 - self.dropout, generator=generator).div_(1 - self.dropout)  # (B, 1, H)
        return self.split_head(self.head(y)), (h[0], c[0])

    def step(self, z: torch.Tensor, a: torch.Tensor, state: State | None = None) -> tuple[MDRNNOutput, State]:
        """One step: z (B, Z), a (B, A), state ((B, H), (B, H)) -> (outputs with shapes (B, ...), new state)."""
        if state is None:
            state = self.initial_state(z.shape[0], z.device, z.dtype)
        h, c = state
        lstm = self.lstm
        x = torch.cat([z, a.to(z.dtype)], dim=-1)  # (B, Z+A)
        gates = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(h, lstm.weight_hh_l0, lstm.bias_hh_l0)
        i, f, g, o = gates.chunk(4, dim=-1)  # torch.nn.LSTM's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.split_head(self.head(h)), (h, c)


def gmm_nll(x: torch.Tensor, logpi: torch.Tensor, mu: torch.Tensor, logsigma: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood per latent dimension of x (..., Z) under per-dimension mixtures (..., Z, K).

    ``mask`` (bool, shape ``x.shape[:-1]``) marks real entries; padded ones do not count, whatever they hold.
    """
    xk = x.unsqueeze(-1)  # (..., Z, 1)
    log_normal = -0.5 * ((xk - mu) * torch.exp(-logsigma)) ** 2 - logsigma - LOG_SQRT_2PI  # (..., Z, K)
    nll = -torch.logsumexp(logpi + log_normal, dim=-1)  # (..., Z)
    if mask is None:
        return nll.mean()
    keep = mask.unsqueeze(-1).expand_as(nll)
    return torch.where(keep, nll, torch.zeros_like(nll)).sum() / keep.sum().clamp(min=1)


def sample_gmm_from_noise(logits: torch.Tensor, mu: torch.Tensor, logsigma: torch.Tensor, temperature: float,
                          u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """:func:`sample_gmm` with its randomness given: u uniform (..., Z) picks the component, eps normal (..., Z).

    ``logits`` may be unnormalised: softmax(logits / tau) does not depend on a per-dimension shift.
    """
    probs = torch.softmax(logits / temperature, dim=-1)  # (..., Z, K)
    cdf = probs.cumsum(dim=-1)
    k = (cdf < u.unsqueeze(-1)).sum(dim=-1, keepdim=True).clamp_(max=logits.shape[-1] - 1)  # (..., Z, 1)
    mu_k = mu.gather(-1, k).squeeze(-1)
    sigma_k = logsigma.gather(-1, k).squeeze(-1).exp()
    return mu_k + sigma_k * (math.sqrt(temperature) * eps)


def sample_gmm(logpi: torch.Tensor, mu: torch.Tensor, logsigma: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample z (..., Z): mixture logits divided by tau, one component per dimension, z = mu_k + sigma_k sqrt(tau) eps."""
    if not temperature > 0:
        raise WorldModelsError(f"temperature must be positive, got {temperature}")
    shape = mu.shape[:-1]
    u = torch.rand(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return sample_gmm_from_noise(logpi, mu, logsigma, temperature, u, eps)


def sample_latents(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2): V's posterior, re-sampled for teacher forcing."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)


def mdrnn_loss(out: MDRNNOutput, z_next: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
               mask_z: torch.Tensor | None = None, mask: torch.Tensor | None = None, reward_weight: float = 1.0,
               done_weight: float = 1.0, done_pos_weight: float = 10.0) -> dict[str, torch.Tensor]:
    """GMM NLL of z_next + reward MSE + done BCE (positives weighted); padded steps ignored.

    z_next (B, T, Z); reward, done (B, T). ``mask_z`` marks steps with a next latent (not an episode's last),
    ``mask`` steps inside the episode. Returns ``loss``, ``nll``, ``reward_mse``, ``done_bce``.
    """
    nll = gmm_nll(z_next, out.logpi, out.mu, out.logsigma, mask_z)
    reward_mse = _masked_mean((out.reward - reward) ** 2, mask)
    pos_weight = torch.tensor(done_pos_weight, device=done.device, dtype=out.done_logit.dtype)
    bce = F.binary_cross_entropy_with_logits(out.done_logit, done.to(out.done_logit.dtype), reduction="none",
                                             pos_weight=pos_weight)
    done_bce = _masked_mean(bce, mask)
    loss = nll + reward_weight * reward_mse + done_weight * done_bce
    return {"loss": loss, "nll": nll, "reward_mse": reward_mse, "done_bce": done_bce}


def load_mdrnn(path: str | os.PathLike, device: torch.device | str = "cpu") -> MDRNN:
    """Load M from a ``checkpoint.pt`` or its folder, in eval mode on ``device``; one-line errors otherwise.

    The model carries ``checkpoint_id`` (the training run's id) and ``checkpoint_path``.
    """
    from worldmodels.checkpoint import checkpoint_file, load_checkpoint

    state = load_checkpoint(path, kind="mdrnn", map_location=device)
    try:
        model = MDRNN(**state["model_args"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise WorldModelsError(f"{path}: MDRNN checkpoint does not match the model "
                               f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    model.checkpoint_id = state["id"]
    model.checkpoint_path = str(checkpoint_file(path).resolve())
    return model.to(device).eval()
