"""DreamEnv: B imagined episodes of M stepped together as a few batched tensor ops on one device.

One step is: write the action into a persistent [a | z | h] buffer, one fused matmul for all four LSTM
gates, in-place gate nonlinearities, one matmul for the mixture/reward/done head, a mixture sample
with the temperature, then the freeze of finished members. There is no per-member Python loop and no
host synchronisation inside ``step`` (``all_done()`` syncs, only when called). Random numbers come from
per-member counter-based streams (``worldmodels.dream.rng``), so a member of a batched dream equals
a single dream with the same seed and stream id.

M's weights are copied into the fused layout at every ``reset()``, so a dream always uses the
weights M has at the start of its episodes.

Dream ensembles (docs/mdrnn.md): with ``dropout`` > 0 each member's episode draws a fixed dropout mask
over the h that enters the head, and with extra ``models`` each draws one of the K Ms; both draws come
from the member's own stream at its episode's start, so every member dreams with its own M.

Dream starts (docs/mdrnn.md): by default every episode starts at a real first frame with h = 0, as in the
paper. ``initial_latents`` may also carry M's LSTM state (h, c) per start, so a dream can start at any real
frame with the state M reached on the real frames before it (:meth:`worldmodels.agent.World.initial_latents`).
The ``nearest`` reward snaps M's predicted reward to the nearest of ``reward_values`` (the rewards seen in
the data): in sparse-reward games M's near-zero reward bias, summed over a long dream, otherwise outweighs
the rare real rewards and is what C learns to maximise. The ``calibrated`` reward snaps it the same way but
compares it with ``reward_centers``, what M's head predicts on the real frames of each value: a head that
learned a rare reward of 10 at ~3 (a regression shrinks rare events) then still pays 10 where ``nearest``
pays 0.

Pessimism (docs/mdrnn.md, "A pessimistic dream"): with ``penalty`` > 0 every step pays M's reward minus
``penalty`` times the spread of the rewards M predicts through ``penalty_masks`` dropout masks over h (MC dropout;
the same masks for every member, drawn from the seed at each ``reset``), so a controller gains nothing by
driving the dream where M cannot tell what happens.

A return cap (docs/mdrnn.md, "A dream that ends where the game would"): with ``return_cap``, a member's episode
ends (terminated) the step its return reaches the cap, and that step pays only what is left below it. M's done
head may never have seen a game end by success (CarRacing ends when a lap is done, ~930 at best), and a dream
that pays past it rewards a speed the game does not: capped, a controller can only gain on the dreams it loses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch

from worldmodels.dream import rng
from worldmodels.errors import WorldModelsError
from worldmodels.models.mdrnn import MDRNN

OBS_MODES = ("zh", "zch", "z")
REWARDS = ("predicted", "survival", "nearest", "calibrated")


@dataclasses.dataclass
class AugmentContext:
    """What an augmentation sees at each step (see docs/mdrnn.md, "Augmentation hook")."""

    step: int  # step() calls since reset()
    t: torch.Tensor  # (B,) int64: each member's step index within its episode
    state: tuple[torch.Tensor, torch.Tensor]  # (h, c) after this step's LSTM update, each (B, H)
    vae: Any
    mdrnn: MDRNN
    generator: torch.Generator
    device: torch.device


class DreamEnv:
    """A batched dream of M: ``reset() -> obs (B, obs_dim)``, ``step(actions) -> (obs, reward, done, info)``."""

    def __init__(self, vae: Any, mdrnn: MDRNN, initial_latents: tuple[torch.Tensor, torch.Tensor],
                 temperature: float = 1.0, batch_size: int = 1, device: torch.device | str = "cpu",
                 max_steps: int = 1000, reward: str = "predicted", obs_mode: str = "zh", seed: int | None = None,
                 augmentations: Sequence[Any] = (), stream_ids: torch.Tensor | Sequence[int] | None = None,
                 dropout: float = 0.0, models: Sequence[MDRNN] = (), reward_values: Sequence[float] = (),
                 penalty: float = 0.0, penalty_masks: int = 8, penalty_dropout: float = 0.1,
                 reward_centers: Sequence[float] = (), return_cap: float | None = None):
        """``initial_latents`` = (mu, logvar) (N, Z) of real first frames, or (mu, logvar, h, c) with M's
        state (N, H) at each start (h = c = 0 otherwise); ``stream_ids`` (B,) picks each
        member's random stream (default 0..B-1). ``dropout``: each member's episode reads M's head through
        its own dropout mask of that rate; ``models``: more Ms of M's sizes, each member's episode steps
        one of the 1 + len(models) drawn uniformly (dream ensembles; 0 and () are the plain dream);
        ``reward_values``: the rewards the ``nearest`` reward snaps M's prediction to; ``reward_centers``: for
        the ``calibrated`` reward, M's typical prediction at each of ``reward_values`` (in their order): a step
        pays the value whose center is nearest M's prediction. ``penalty``: each step's
        reward loses this many times the standard deviation of M's predicted reward over ``penalty_masks``
        dropout masks of rate ``penalty_dropout`` over h (0: the plain dream's reward, nothing computed).
        ``return_cap`` (> 0): an episode ends the step its return reaches it, paying at most the rest (None: no cap)."""
        if reward not in REWARDS:
            raise WorldModelsError(f"dream reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        if obs_mode not in OBS_MODES:
            raise WorldModelsError(f"dream obs_mode must be one of {', '.join(OBS_MODES)}, got {obs_mode!r}")
        if not temperature > 0:
            raise WorldModelsError(f"dream temperature must be positive, got {temperature}")
        if batch_size < 1 or max_steps < 1:
            raise WorldModelsError(f"dream batch_size and max_steps must be >= 1, got {batch_size}, {max_steps}")
        if not 0 <= dropout < 1:
            raise WorldModelsError(f"dream dropout must be in [0, 1), got {dropout}")
        if not penalty >= 0 or penalty_masks < 2 or not 0 < penalty_dropout < 1:
            raise WorldModelsError(f"dream penalty must be >= 0 with >= 2 masks of a rate in (0, 1), got {penalty}, "
                                   f"{penalty_masks}, {penalty_dropout}")
        if return_cap is not None and not (math.isfinite(return_cap) and return_cap > 0):
            raise WorldModelsError(f"dream return cap must be a positive number (or none), got {return_cap}")
        sizes = ("z_dim", "action_dim", "hidden", "n_gaussians")
        for i, other in enumerate(models):
            if any(getattr(other, k) != getattr(mdrnn, k) for k in sizes):
                raise WorldModelsError(f"dream model {i + 1} has sizes {[getattr(other, k) for k in sizes]}, not M's "
                                       f"{[getattr(mdrnn, k) for k in sizes]} ({', '.join(sizes)})")
        self.device = torch.device(device)
        self.vae, self.mdrnn = vae, mdrnn
        self.models, self.dropout = [mdrnn, *models], float(dropout)
        self.dtype = mdrnn.lstm.weight_hh_l0.dtype
        if len(initial_latents) not in (2, 4):
            raise WorldModelsError(f"initial_latents must be (mu, logvar) or (mu, logvar, h, c), got {len(initial_latents)} arrays")
        mu0, logvar0, *state0 = (torch.as_tensor(x).to(self.device, self.dtype) for x in initial_latents)
        if mu0.ndim != 2 or mu0.shape != logvar0.shape or mu0.shape[1] != mdrnn.z_dim or len(mu0) == 0:
            raise WorldModelsError(f"initial_latents must be (mu, logvar) of shape (N, {mdrnn.z_dim}), "
                                   f"got {tuple(mu0.shape)} and {tuple(logvar0.shape)}")
        if state0 and any(x.shape != (len(mu0), mdrnn.hidden) for x in state0):
            raise WorldModelsError(f"initial (h, c) must each have shape ({len(mu0)}, {mdrnn.hidden}), "
                                   f"got {[tuple(x.shape) for x in state0]}")
        self.initial_mu, self.initial_sigma = mu0, torch.exp(0.5 * logvar0)
        self.initial_state = tuple(state0) if state0 else None
        if reward in ("nearest", "calibrated") and len(reward_values) == 0:
            raise WorldModelsError(f"the {reward} dream reward needs reward_values (the rewards seen in the data)")
        if reward == "calibrated":
            if len(reward_centers) != len(reward_values) or len(set(float(v) for v in reward_values)) != len(reward_values):
                raise WorldModelsError(f"the calibrated dream reward needs one center per distinct reward value, got "
                                       f"{len(reward_centers)} centers for values {list(reward_values)}")
            pairs = sorted(zip((float(v) for v in reward_values), (float(c) for c in reward_centers)))
        else:
            pairs = [(v, v) for v in sorted(set(float(v) for v in reward_values))]
        self.reward_values = torch.as_tensor([v for v, _ in pairs], device=self.device, dtype=self.dtype)
        self._reward_centers = torch.as_tensor([c for _, c in pairs], device=self.device, dtype=self.dtype)
        self.temperature, self.batch_size, self.max_steps = float(temperature), batch_size, max_steps
        self.reward_mode, self.obs_mode = reward, obs_mode
        self.augmentations = list(augmentations)
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)

        B, Z, A, H = batch_size, mdrnn.z_dim, mdrnn.action_dim, mdrnn.hidden
        ids = torch.arange(B) if stream_ids is None else torch.as_tensor(stream_ids, dtype=torch.int64)
        if ids.shape != (B,):
            raise WorldModelsError(f"stream_ids must have shape ({B},), got {tuple(ids.shape)}")
        self._stream_ids = ids.to(self.device)
        self._idx_keys = rng.index_keys(2 * Z, self.device)
        self._init_idx_keys = rng.index_keys(Z + 1, self.device)
        # the ensemble's draws: the model (index 0) and the dropout mask (1..H), at step t = -2
        self._draw_idx_keys = rng.index_keys(1 + (H if self.dropout else 0), self.device)
        dev, dt = self.device, self.dtype
        self._xh = torch.zeros(B, A + Z + H, device=dev, dtype=dt)  # [a | z | h], the fused matmul's input
        self._c = torch.zeros(B, H, device=dev, dtype=dt)
        self._gates = torch.empty(B, 4 * H, device=dev, dtype=dt)
        self._survival = torch.ones(B, device=dev, dtype=dt)
        self.returns = torch.zeros(B, device=dev, dtype=dt)
        self.lengths = torch.zeros(B, device=dev, dtype=torch.int64)
        self.done = torch.ones(B, device=dev, dtype=torch.bool)  # nothing runs before reset()
        self._episodes = torch.full((B,), -1, device=dev, dtype=torch.int64)
        self.model_ids = torch.zeros(B, device=dev, dtype=torch.int64)  # which of self.models each member steps
        # with K > 1 (set at every (re)start): each member's row in _grouped's (K, n) layout, and each row's member
        self._slot: torch.Tensor | None = None
        self._gather: torch.Tensor | None = None
        self.head_mask = torch.ones(B, H, device=dev, dtype=dt) if self.dropout else None  # (B, H): 0 or 1/(1-p)
        self.penalty, self.penalty_masks = float(penalty), int(penalty_masks)
        self.penalty_dropout = float(penalty_dropout)
        self.return_cap = None if return_cap is None else float(return_cap)
        self.uncertainty = torch.zeros(B, device=dev, dtype=dt)  # per member: the penalised spread, summed
        self._keys = rng.stream_keys(self.seed, self._stream_ids)
        self._ep_keys = self._keys
        self.n_steps = 0

    # --- sizes -------------------------------------------------------------------------------------
    @property
    def z(self) -> torch.Tensor:
        """Current latents (B, Z) (a view: clone it to keep it)."""
        A, Z = self.mdrnn.action_dim, self.mdrnn.z_dim
        return self._xh[:, A:A + Z]

    @property
    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current LSTM state (h, c), each (B, H) (views)."""
        return self._xh[:, self.mdrnn.action_dim + self.mdrnn.z_dim:], self._c

    @property
    def obs_dim(self) -> int:
        Z, H = self.mdrnn.z_dim, self.mdrnn.hidden
        return {"z": Z, "zh": Z + H, "zch": Z + 2 * H}[self.obs_mode]

    def _obs(self) -> torch.Tensor:
        A = self.mdrnn.action_dim
        if self.obs_mode == "zh":
            return self._xh[:, A:].clone()  # [z | h] lies contiguous in the buffer
        if self.obs_mode == "z":
            return self.z.clone()
        h, c = self.state
        return torch.cat([self.z, c, h], dim=1)

    # --- episodes ----------------------------------------------------------------------------------
    def _load_weights(self) -> None:
        """Copy M (every M of an ensemble, stacked along a first dimension K) into the dream's fused layout."""
        fused = [self._fuse(m) for m in self.models]
        if len(fused) == 1:
            self._w, self._b, self._head_w, self._head_b = fused[0]
        else:
            self._w, self._b, self._head_w, self._head_b = (torch.stack(parts) for parts in zip(*fused))

    def _fuse(self, m: MDRNN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One M in the dream's fused layout, constants folded into the weights.

        LSTM: gate rows [i, f, o, g] with g's rows doubled, so one sigmoid serves all four gates
        (tanh(x) = 2 sigmoid(2x) - 1, and sigmoid is several times faster than tanh on CPU); input
        columns [a | z | h]. Head: mixture columns component-major (K, Z), so reductions over K run on
        contiguous rows; logits divided by tau; log sigma shifted by log sqrt(2 tau), so a sample is
        mu_k + exp(logsigma_k) * erfinv(2u - 1).
        """
        Z, K = m.z_dim, m.n_gaussians
        ZK, tau = Z * K, self.temperature
        with torch.no_grad():
            w_ih, w_hh = m.lstm.weight_ih_l0, m.lstm.weight_hh_l0  # (4H, Z+A), (4H, H); rows i, f, g, o
            w = torch.cat([w_ih[:, Z:], w_ih[:, :Z], w_hh], dim=1)  # (4H, A+Z+H)
            b = m.lstm.bias_ih_l0 + m.lstm.bias_hh_l0
            i, f, g, o = w.chunk(4, 0)
            bi, bf, bg, bo = b.chunk(4, 0)
            gates_w = torch.cat([i, f, o, 2 * g], 0).t().contiguous().to(self.device, self.dtype)  # (A+Z+H, 4H)
            gates_b = torch.cat([bi, bf, bo, 2 * bg], 0).to(self.device, self.dtype)
            hw, hb = m.head.weight, m.head.bias  # (3ZK+2, H), (3ZK+2,)
            per_component = torch.arange(ZK, device=hw.device).view(Z, K).t().reshape(-1)  # (Z,K) -> (K,Z)
            order = torch.cat([per_component + j * ZK for j in range(3)]
                              + [torch.arange(3 * ZK, 3 * ZK + 2, device=hw.device)])  # M's device, like hw
            scale = torch.ones(3 * ZK + 2, dtype=hw.dtype, device=hw.device)
            scale[:ZK] = 1.0 / tau
            shift = torch.zeros_like(scale)
            shift[2 * ZK:3 * ZK] = 0.5 * math.log(2 * tau)
            head_w = (hw[order] * scale[:, None]).t().contiguous().to(self.device, self.dtype)  # (H, 3ZK+2)
            head_b = (hb[order] * scale + shift).to(self.device, self.dtype)
        return gates_w, gates_b, head_w, head_b

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start B new episodes from real frames (``initial_latents``); a seed restarts the random streams."""
        if seed is not None:
            self.seed = int(seed)
            self._keys = rng.stream_keys(self.seed, self._stream_ids)
            self._episodes.fill_(-1)
            self.generator.manual_seed(self.seed)
        self._load_weights()
        if self.penalty:
            # the run's M's reward column (model 0 of an ensemble's stacked heads: the spread is M's)
            head_w = self._head_w if self._head_w.ndim == 2 else self._head_w[0]
            reward_w = head_w[:, 3 * self.mdrnn.z_dim * self.mdrnn.n_gaussians].cpu()  # (H,)
            # masks shared by every member (common random numbers for the candidates); new ones with each seed
            g = torch.Generator().manual_seed(self.seed ^ 0x5EED_0F_D0B7)
            keep = torch.rand(self.penalty_masks, self.mdrnn.hidden, generator=g) >= self.penalty_dropout
            self._penalty_w = (keep.to(self.dtype) / (1 - self.penalty_dropout)).mul_(
                reward_w).t().contiguous().to(self.device)  # (H, masks): each mask's reward weights
        self.n_steps = 0
        self._restart(torch.ones(self.batch_size, dtype=torch.bool, device=self.device))
        for aug in self.augmentations:
            aug.reset(self.batch_size, self.max_steps, self.generator, self.device)
        return self._obs()

    def reset_members(self, mask: torch.Tensor, delay: int = 0) -> torch.Tensor:
        """Start a new episode for the members where ``mask`` (B,) is true; the others keep going.

        Each augmentation draws the restarted members' schedules afresh (``aug.restart``), like new
        trajectories. ``delay``: the ``step()`` calls for which the caller freezes the restarted members
        before they first move (the vector env's autoreset: 1), so events land on their new episode's steps.
        """
        mask = mask.to(self.device)
        obs = self._restart(mask)
        for aug in self.augmentations:
            restart = getattr(aug, "restart", None)  # optional in the hook (docs/mdrnn.md)
            if restart is not None:
                restart(mask, self.n_steps + delay)
        return obs

    def _restart(self, mask: torch.Tensor) -> torch.Tensor:
        """New episodes (a start's latents and state, zero return and length) for the members where ``mask`` is true."""
        mask = mask.to(self.device)
        self._episodes += mask
        self._ep_keys = rng.episode_keys(self._keys, self._episodes)
        if len(self.models) > 1 or self.dropout:
            self._draw_members(mask)
        first = torch.full_like(self.lengths, -1)
        u = rng.uniforms(self._ep_keys, first, self._init_idx_keys, self.dtype)  # (B, Z+1)
        n = len(self.initial_mu)
        pick = (u[:, 0] * n).long().clamp_(max=n - 1)
        z0 = self.initial_mu[pick] + self.initial_sigma[pick] * torch.special.ndtri(u[:, 1:])  # (B, Z)
        A, Z = self.mdrnn.action_dim, self.mdrnn.z_dim
        keep = ~mask.unsqueeze(1)
        self._xh[:, A:A + Z] = torch.where(keep, self.z, z0)
        if self.initial_state is None:
            self._xh[:, A + Z:] *= keep
            self._c *= keep
        else:
            h0, c0 = self.initial_state
            self._xh[:, A + Z:] = torch.where(keep, self._xh[:, A + Z:], h0[pick])
            self._c.copy_(torch.where(keep, self._c, c0[pick]))
        self.returns *= ~mask
        self.uncertainty *= ~mask
        self.lengths *= ~mask
        self.done &= ~mask
        return self._obs()

    def _draw_members(self, mask: torch.Tensor) -> None:
        """The M of each new episode where ``mask`` is true: one of the K models (uniform) and a dropout mask
        over h (keep with probability 1 - p, scaled by 1 / (1 - p), as in training), fixed for the episode.
        Drawn from the member's own stream at step -2 (its first latents use -1, its steps 0, 1, ...), so
        the latents' noise is the plain dream's. Grouping members by model costs one host sync."""
        at = torch.full_like(self.lengths, -2)
        u = rng.uniforms(self._ep_keys, at, self._draw_idx_keys, self.dtype)  # (B, 1), or (B, 1 + H) with dropout
        if len(self.models) > 1:
            K, B = len(self.models), self.batch_size
            self.model_ids = torch.where(mask, (u[:, 0] * K).long().clamp_(max=K - 1), self.model_ids)
            counts = torch.bincount(self.model_ids, minlength=K)
            n = int(counts.max())  # the host sync: the padded group size
            rank = torch.empty_like(self.model_ids)
            rank[torch.argsort(self.model_ids, stable=True)] = torch.arange(B, device=self.device)
            self._slot = self.model_ids * n + rank - (counts.cumsum(0) - counts)[self.model_ids]  # (B,)
            self._gather = torch.zeros(K * n, device=self.device, dtype=torch.int64).index_copy_(
                0, self._slot, torch.arange(B, device=self.device))  # (K n,): padding rows read member 0
        if self.head_mask is not None:
            keep = (u[:, 1:] >= self.dropout).to(self.dtype).div_(1 - self.dropout)  # (B, H)
            self.head_mask = torch.where(mask.unsqueeze(1), keep, self.head_mask)

    def all_done(self) -> bool:
        """True when every member has finished (synchronises with the device)."""
        return bool(self.done.all())

    # --- the step ----------------------------------------------------------------------------------
    def _write_actions(self, actions: Any) -> None:
        A = self.mdrnn.action_dim
        a = torch.as_tensor(actions, device=self.device)
        buf = self._xh[:, :A]
        if a.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            if a.shape != (self.batch_size,):
                raise WorldModelsError(f"discrete actions must have shape ({self.batch_size},), got {tuple(a.shape)}")
            buf.zero_().scatter_(1, a.long().unsqueeze(1), 1.0)
        else:
            if a.shape != (self.batch_size, A):
                raise WorldModelsError(f"actions must have shape ({self.batch_size}, {A}), got {tuple(a.shape)}")
            buf.copy_(a)

    def step(self, actions: Any, frozen: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Advance every unfinished member one step.

        actions: float (B, A) or integer (B,) (one-hot for M). ``frozen`` (B,) bool: members that must not
        move this step (besides finished ones). Returns obs (B, obs_dim), reward (B,) (0 for members that
        did not move), done (B,) bool (finished, now or before), and info with this step's newly
        ``terminated`` (done logit > 0) and ``truncated`` (max_steps reached) members.
        """
        m = self.mdrnn
        Z, H, K = m.z_dim, m.hidden, m.n_gaussians
        ZK = Z * K
        self._write_actions(actions)
        alive = ~self.done if frozen is None else ~(self.done | frozen.to(self.device))  # (B,)

        if self._slot is not None:  # an ensemble: each member's gates from its own model's weights
            gates = self._grouped(self._b, self._xh, self._w, self._gates).sigmoid_()  # (B, 4H): i f o | g
        else:
            gates = torch.addmm(self._b, self._xh, self._w, out=self._gates).sigmoid_()  # (B, 4H): i f o | g
        i, f, o, g = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        g.mul_(2).sub_(1)  # = tanh of the raw g gate
        c_new = torch.addcmul(f * self._c, i, g)  # (B, H)
        h_new = torch.mul(c_new, 2).sigmoid_().mul_(2).sub_(1).mul_(o)  # o * tanh(c_new)
        # dropout masks only what the head reads; the recurrence (and C) keep h, as torch.nn.LSTM in training
        h_head = h_new if self.head_mask is None else h_new * self.head_mask
        if self._slot is not None:
            out = self._grouped(self._head_b, h_head, self._head_w)
        else:
            out = torch.addmm(self._head_b, h_head, self._head_w)  # (B, 3ZK+2), mixtures as (K, Z)
        u = rng.uniforms(self._ep_keys, self.lengths, self._idx_keys, self.dtype)  # (B, 2Z)
        z_next = self._sample(out, u[:, :Z], torch.erfinv(u[:, Z:].mul(2).sub_(1)))  # (B, Z)
        if self.augmentations:
            ctx = AugmentContext(self.n_steps, self.lengths, (h_new, c_new), self.vae, m, self.generator, self.device)
            for aug in self.augmentations:
                z_next = aug(z_next, ctx)

        # lerp with a 0/1 weight is exact (x + 0 * d, or y - d * 0) and ~10x faster than torch.where here
        keep = alive.to(self.dtype)  # (B,)
        keep_col = keep.unsqueeze(1)
        z, (h, c) = self.z, self.state
        z.lerp_(z_next, keep_col)
        h.lerp_(h_new, keep_col)
        c.lerp_(c_new, keep_col)
        if self.reward_mode == "survival":
            reward = self._survival
        else:
            reward = out[:, 3 * ZK]
            if self.reward_mode in ("nearest", "calibrated"):
                reward = self.reward_values[(reward.unsqueeze(1) - self._reward_centers).abs().argmin(1)]
        if self.penalty:  # the reward's spread over the masks (the head's bias is the same in each)
            spread = torch.mm(h_new, self._penalty_w).std(1) * keep  # (B,)
            self.uncertainty += spread
            reward = reward - self.penalty * spread
        reward = reward * keep
        capped = None
        if self.return_cap is not None:  # (finished members pay 0 and are not alive)
            capped = alive & (self.returns + reward >= self.return_cap)
            reward = torch.where(capped, self.return_cap - self.returns, reward)
        self.returns += reward
        self.lengths += alive
        terminated = alive & (out[:, 3 * ZK + 1] > 0)
        if capped is not None:
            self.returns.masked_fill_(capped, self.return_cap)  # exactly the cap, whatever the float rounding
            terminated |= capped
        truncated = alive & ~terminated & (self.lengths >= self.max_steps)
        self.done |= terminated | truncated
        self.n_steps += 1
        return self._obs(), reward, self.done.clone(), {"terminated": terminated, "truncated": truncated}

    def _grouped(self, b: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """x @ w[k] + b[k] with each member's model k: x (B, i), w (K, i, o), b (K, o) -> (B, o).

        One batched matmul over the members grouped by model, each group padded to the largest: on CPU at
        B = 1024 a little faster than a matmul per model on its members, and one kernel on a GPU.
        """
        K = len(self.models)
        grouped = x.index_select(0, self._gather).view(K, -1, x.shape[1])  # (K, n, i)
        y = torch.baddbmm(b.unsqueeze(1), grouped, w)  # (K, n, o)
        return torch.index_select(y.view(-1, y.shape[2]), 0, self._slot, out=out)

    def _sample(self, out: torch.Tensor, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """One mixture sample per dimension from the head's output (dream layout), u uniform, eps normal/sqrt 2."""
        m = self.mdrnn
        B, Z, K = out.shape[0], m.z_dim, m.n_gaussians
        ZK = Z * K
        logits = out[:, :ZK].view(B, K, Z)  # already divided by tau
        cdf = (logits - logits.amax(1, keepdim=True)).exp_().cumsum_(1)  # (B, K, Z), unnormalised
        k = (cdf[:, :-1] < (u * cdf[:, -1]).unsqueeze(1)).sum(1)  # (B, Z): the inverse CDF at u
        picked = out[:, ZK:3 * ZK].view(B, 2, K, Z).gather(2, k.view(B, 1, 1, Z).expand(B, 2, 1, Z))  # (B, 2, 1, Z)
        return torch.addcmul(picked[:, 0, 0], picked[:, 1, 0].exp(), eps)

    # --- pictures ----------------------------------------------------------------------------------
    @torch.no_grad()
    def frames(self, members: Sequence[int] | slice | None = None) -> np.ndarray:
        """Decode the current latents of some members with V: uint8 (n, 64, 64, 3)."""
        if self.vae is None:
            raise WorldModelsError("this dream has no VAE to decode frames with")
        z = self.z if members is None else self.z[members]
        w = next(self.vae.parameters())
        x = self.vae.decode(z.to(w.device, w.dtype))  # (n, 3, 64, 64) in [0, 1], on V's device
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def flops_per_step(mdrnn: MDRNN, batch_size: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one dream step's two matmuls: the LSTM gates and the head."""
    Z, A, H, K = mdrnn.z_dim, mdrnn.action_dim, mdrnn.hidden, mdrnn.n_gaussians
    return 2 * batch_size * ((A + Z + H) * 4 * H + H * (3 * Z * K + 2))
