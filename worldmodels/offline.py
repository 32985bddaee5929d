"""The offline baseline: fit C on the collected episodes only, with no imagination and no new interaction.

Return-weighted regression of the logged actions on C's input ``x_t = [z_t, h_t]`` (or ``[z, c, h]``,
or ``z``): ``z_t`` is V's mean latent ``mu_t`` of the logged frame and ``h_t`` is M's state after
reading ``(z_0, a_0) ... (z_{t-1}, a_{t-1})`` (zero at t = 0). This is the controller-input rule of
docs/controller.md ("C's input"): the same ``h`` recursion and the same concatenation
(:func:`worldmodels.models.controller.controller_input`) as the real-env agent and the dream. It differs
from what the agent feeds C in one respect, on purpose: the agent samples ``z_t = mu_t + sigma_t * eps``
(``BatchAgent(sample_z=True)``, the default, as in the authors' code), the fit uses ``mu_t``, so its
inputs carry no noise that is unrelated to the logged actions. With ``sample_z=False`` the agent feeds
C exactly these features (tests/test_offline.py checks it on a played episode).
Every frame of episode e carries its episode's weight w_e:

- ``softmax`` (default): ``w = softmax(beta * (R - mean R) / std R)``, rescaled to mean 1;
- ``minmax``: ``w = (R - min R) / (max R - min R)`` (the worst episode gets weight 0);
- ``uniform``: ``w = 1`` (plain behaviour cloning).
If every episode has the same return, the weights are uniform.

The fit is weighted ridge least squares, ``theta = (X^T W X + lambda I)^-1 X^T W Y`` with
``lambda = ridge * sum(w)`` (the bias column is not penalised), accumulated over episode chunks, on
targets in C's raw output space:

- discrete actions with one logit per action (ProcGen): one-hot targets (so the argmax of the fitted
  logits is a linear one-vs-rest classifier);
- Doom's thirds mapping: ``atanh(-2/3)`` (left), 0 (stay), ``atanh(2/3)`` (right): the centres of the
  thirds of tanh's range;
- CarRacing: the action mapping inverted (``atanh`` of steer, of ``2 gas - 1`` and of brake, clipped
  to +-0.995 first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from worldmodels.errors import WorldModelsError
from worldmodels.models.controller import DOOM_LEFT, DOOM_RIGHT, ActionMap

WEIGHTINGS = ("softmax", "minmax", "uniform")
CLIP = 0.995


@dataclass
class OfflineFit:
    """The fitted controller's flat parameters (weight row-major, then bias) and what it was fitted on."""

    params: np.ndarray
    info: dict[str, Any]


def episode_weights(returns: Sequence[float], weighting: str = "softmax", beta: float = 1.0) -> np.ndarray:
    """Per-episode weights (E,) from returns (E,), mean 1 (see the module docstring)."""
    r = np.asarray(returns, dtype=np.float64)
    if weighting not in WEIGHTINGS:
        raise WorldModelsError(f"unknown offline weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if len(r) == 0 or not np.all(np.isfinite(r)):
        raise WorldModelsError("offline fit needs at least one episode with a finite return")
    spread = r.max() - r.min()
    if weighting == "uniform" or spread == 0:
        return np.ones_like(r)
    if weighting == "minmax":
        w = (r - r.min()) / spread
    else:
        s = beta * (r - r.mean()) / r.std()
        w = np.exp(s - s.max())
    return w * (len(w) / w.sum())


def raw_targets(actions: np.ndarray, action_map: ActionMap) -> np.ndarray:
    """Logged actions -> regression targets in C's raw output space, (T, O)."""
    a = np.asarray(actions)
    if action_map.kind == "argmax":
        return np.eye(action_map.output_dim)[a.astype(np.int64)]
    if action_map.kind == "thirds":
        t = np.zeros((len(a), 1))
        t[a == DOOM_LEFT], t[a == DOOM_RIGHT] = math.atanh(-2 / 3), math.atanh(2 / 3)
        return t
    a = a.astype(np.float64)
    return np.arctanh(np.clip(np.stack([a[:, 0], 2 * a[:, 1] - 1, a[:, 2]], axis=1), -CLIP, CLIP))


class NormalEquations:
    """Accumulates X^T W X and X^T W Y over chunks, then solves the weighted ridge problem."""

    def __init__(self, input_dim: int, output_dim: int, bias: bool):
        n = input_dim + int(bias)
        self.bias = bias
        self.xtx, self.xty, self.total = np.zeros((n, n)), np.zeros((n, output_dim)), 0.0

    def add(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        """x (N, I), y (N, O), w (N,)."""
        x = np.asarray(x, dtype=np.float64)
        if self.bias:
            x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        xw = x * w[:, None]
        self.xtx += xw.T @ x
        self.xty += xw.T @ y
        self.total += float(w.sum())

    def solve(self, ridge: float) -> np.ndarray:
        """Flat controller parameters: weight (O, I) row-major, then bias (O,)."""
        penalty = np.full(len(self.xtx), ridge * max(self.total, 1e-12))
        if self.bias:
            penalty[-1] = 1e-9 * max(self.total, 1.0)  # keeps the system solvable, leaves the bias free
        theta = np.linalg.solve(self.xtx + np.diag(penalty), self.xty)  # (I [+1], O)
        weight = theta[:-1] if self.bias else theta
        flat = [weight.T.reshape(-1)] + ([theta[-1]] if self.bias else [])
        return np.concatenate(flat)


def fit_policy(features: Sequence[np.ndarray], actions: Sequence[np.ndarray], returns: Sequence[float],
               action_map: ActionMap, weighting: str = "softmax", beta: float = 1.0, ridge: float = 1e-3) -> OfflineFit:
    """Return-weighted regression of logged actions on given features, one array per episode."""
    weights = episode_weights(returns, weighting, beta)
    eq = NormalEquations(features[0].shape[1], action_map.output_dim, action_map.bias)
    for x, a, w in zip(features, actions, weights):
        eq.add(x, raw_targets(a, action_map), np.full(len(x), w))
    return OfflineFit(eq.solve(ridge), {"episodes": len(weights), "frames": int(sum(len(x) for x in features)),
                                        "weighting": weighting, "beta": beta, "ridge": ridge,
                                        "weight_min": float(weights.min()), "weight_max": float(weights.max())})


@torch.no_grad()
def controller_features(mdrnn: Any, z: Sequence[np.ndarray], actions: Sequence[torch.Tensor], obs_mode: str,
                        device: torch.device | str = "cpu") -> list[np.ndarray]:
    """C's inputs along logged episodes: M run over each episode's (z_t, a_t), all episodes batched.

    z: per-episode (T_e, Z) latents; actions: per-episode (T_e, A) float inputs for M. Returns (T_e, I).
    """
    from worldmodels.models.controller import controller_input

    lengths = [len(x) for x in z]
    E, T = len(z), max(lengths)
    dtype = mdrnn.lstm.weight_hh_l0.dtype
    zs = torch.zeros(E, T, mdrnn.z_dim, dtype=dtype, device=device)  # (E, T, Z), zero padded
    acts = torch.zeros(E, T, mdrnn.action_dim, dtype=dtype, device=device)
    for e in range(E):
        zs[e, :lengths[e]] = torch.as_tensor(np.asarray(z[e]), dtype=dtype, device=device)
        acts[e, :lengths[e]] = torch.as_tensor(actions[e], dtype=dtype, device=device)
    state = mdrnn.initial_state(E, device, dtype)
    out = []
    for t in range(T):
        out.append(controller_input(zs[:, t], state, obs_mode))  # (E, I): what C sees before acting
        _, state = mdrnn.step(zs[:, t], acts[:, t], state)
    x = torch.stack(out, 1).double().cpu().numpy()  # (E, T, I)
    return [x[e, :lengths[e]] for e in range(E)]


def episode_features(world: Any, episodes: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """C's inputs (T_e, I) along logged episodes as the offline fit sees them: :func:`controller_features` on
    each episode's stored ``mu`` and its stored ``action`` (M's one-hot or float input), M on ``world.device``."""
    acts = [world.action_map.model_input(torch.as_tensor(ep["action"])) for ep in episodes]
    return controller_features(world.mdrnn, [ep["mu"] for ep in episodes], acts, world.obs_mode, world.device)


def fit_offline_controller(world: Any, latents: str | Path | None = None, weighting: str = "softmax",
                           beta: float = 1.0, ridge: float = 1e-3, chunk: int = 64) -> OfflineFit:
    """Fit C for a :class:`worldmodels.agent.World` on the episodes of its latents file (or ``latents``).

    Episodes are processed ``chunk`` at a time (M batched over them on ``world.device``). The returned
    ``params`` fit ``Controller(world.input_dim, world.action_map.output_dim, world.action_map.bias)``.
    """
    from worldmodels.data import open_latents

    path = Path(latents) if latents else world.latents_path
    if path is None or not Path(path).is_file():
        raise WorldModelsError(f"offline fit needs the collected episodes' latents file, got {path}")
    amap = world.action_map
    with open_latents(path) as f:
        if f.n_episodes == 0:
            raise WorldModelsError(f"{path} holds no episodes to fit the offline controller on")
        episodes = [f.episode(i, ["mu", "action", "reward"]) for i in range(f.n_episodes)]
    returns = np.array([float(ep["reward"].sum()) for ep in episodes])
    weights = episode_weights(returns, weighting, beta)
    eq = NormalEquations(world.input_dim, amap.output_dim, amap.bias)
    for start in range(0, len(episodes), chunk):
        part = episodes[start:start + chunk]
        feats = episode_features(world, part)
        for x, ep, w in zip(feats, part, weights[start:start + chunk]):
            eq.add(x, raw_targets(ep["action"], amap), np.full(len(x), w))
    params = eq.solve(ridge)
    if not np.all(np.isfinite(params)):
        raise WorldModelsError("offline fit produced non-finite parameters (degenerate data?)")
    return OfflineFit(params, {"latents": str(path), "episodes": len(episodes), "frames": int(sum(len(e["mu"]) for e in episodes)),
                               "weighting": weighting, "beta": beta, "ridge": ridge, "return_mean": float(returns.mean()),
                               "return_max": float(returns.max()), "weight_max": float(weights.max())})


def save_offline_controller(out_dir: str | Path, fit: OfflineFit, world: Any, config: dict[str, Any]) -> Path:
    """Write ``<out_dir>/checkpoint.pt`` in the controller checkpoint format that ``evaluate`` reads.

    ``config`` is recorded as the run's config (``where: offline`` is added); the fit is stored as the
    ``best`` and ``mean`` parameters, generation 0.
    """
    from worldmodels.checkpoint import new_id, save_checkpoint

    identity = {"env": world.env, "vae_id": world.vae_id, "mdrnn_id": world.mdrnn_id, **world.controller_spec()}
    params = np.asarray(fit.params, dtype=np.float64)
    return save_checkpoint(Path(out_dir) / "checkpoint.pt", "controller", {
        "id": new_id(), "config": {**config, "where": "offline"}, "generation": 0, "offline": fit.info,
        "best": {"fitness": float("nan"), "params": params}, "mean": params,
        "best_eval": {"score": -np.inf, "params": params, "generation": -1}, "identity": identity})
