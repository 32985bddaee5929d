"""A run's world: V, M, the env they came from and C's shape (:class:`World`, :func:`load_world`).

The stages that train or score C start here: :meth:`World.dream_factory` builds batched dreams, and
:meth:`World.worker_spec` describes the real-env agent that :mod:`worldmodels.play` loads in workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from worldmodels.errors import WorldModelsError

DREAM_STARTS = ("first", "any")
DREAM_REWARDS = ("auto", "predicted", "nearest", "calibrated", "survival")
ANY_STARTS = 20_000  # dream starts drawn from all frames (dream_starts any): ~40 MB of (h, c) at h 256
NEAREST_MAX_VALUES = 32  # more distinct rewards than this and snapping to them is not a sparse reward


class World:
    """Everything a run's controller needs: V, M, the env it came from and C's shape.

    Loaded by :func:`load_world` from ``<run>/vae`` and ``<run>/mdrnn``; the env, its action space and
    the collection's env options come from the latents file M was trained on (or ``latents``).
    """

    def __init__(self, run_dir: Path, vae: torch.nn.Module, mdrnn: torch.nn.Module, env: str,
                 env_kwargs: dict[str, Any], action_desc: dict[str, Any], latents_path: Path | None,
                 obs_mode: str, device: torch.device):
        from worldmodels.envs import env_family
        from worldmodels.models.controller import controller_input_dim, make_action_map

        self.run_dir, self.vae, self.mdrnn, self.device = run_dir, vae, mdrnn, device
        self.env, self.family, self.env_kwargs = env, env_family(env), env_kwargs
        self.action_desc, self.latents_path, self.obs_mode = action_desc, latents_path, obs_mode
        self.missing_latents: Path | None = None  # a recorded latents file that is not on this machine
        self._starts: dict[str, tuple[torch.Tensor, ...]] = {}  # initial_latents, once per kind
        self._centers: list[float] | None = None  # reward_centers, once
        self.z_dim = int(vae.z_dim)
        self.hidden = int(getattr(mdrnn, "hidden", 0) or mdrnn.lstm.hidden_size)
        self.action_map = make_action_map(self.family, action_desc)
        self.input_dim = controller_input_dim(self.z_dim, self.hidden, obs_mode)

    @property
    def vae_id(self) -> str:
        return str(getattr(self.vae, "checkpoint_id", ""))

    @property
    def mdrnn_id(self) -> str:
        return str(getattr(self.mdrnn, "checkpoint_id", ""))

    @property
    def n_params(self) -> int:
        from worldmodels.models.controller import n_params

        return n_params(self.input_dim, self.action_map.output_dim, self.action_map.bias)

    def controller_spec(self) -> dict[str, Any]:
        return {"input_dim": self.input_dim, "obs_mode": self.obs_mode, "action_map": self.action_map.to_dict()}

    def env_options(self, levels: str) -> dict[str, Any]:
        """The env options for ProcGen ``train`` levels (those collected on) or unseen ``test`` levels."""
        kwargs = dict(self.env_kwargs)
        if self.family == "procgen":
            from worldmodels.envs import procgen_levels

            start, num = procgen_levels(levels, int(kwargs.get("num_levels", 200)))
            kwargs.update(start_level=start, num_levels=num)
        return kwargs

    def worker_spec(self, max_steps: int | None, levels: str = "train", env_backend: str = "reference") -> dict[str, Any]:
        """The plain-dict spec :func:`worldmodels.play.init_worker` loads in each worker process
        (``env_backend`` already resolved to reference or fast)."""
        return {"vae": self.vae.checkpoint_path, "mdrnn": self.mdrnn.checkpoint_path, "env": self.env,
                "env_backend": env_backend, "env_kwargs": self.env_options(levels), "max_steps": max_steps,
                **self.controller_spec()}

    def dream_factory(self, temperature: float, max_steps: int, seed: int, augmentations: Sequence[Any] = (),
                      dropout: float = 0.0, models: Sequence[Any] = (), streams: int | None = None,
                      starts: str = "first", reward: str = "auto", penalty: float = 0.0,
                      return_cap: float | None = None):
        """``batch -> DreamEnv`` of that many members (built once per batch size, per factory), with
        ``augmentations`` (:mod:`worldmodels.augment`) applied inside every step of its dreams, and a dream
        ensemble when asked: a ``dropout`` mask per member's episode, or one of M and ``models`` per episode.
        ``streams`` = E: member b draws from random stream b % E, so every block of E members (one candidate's
        rollouts) gets the same E episodes' draws, i.e. common random numbers across candidates (default: a
        stream per member). ``starts`` and ``reward``: where each episode starts and what it pays
        (:meth:`initial_latents`; ``auto`` is survival for Doom, M's predicted reward otherwise, ``nearest``
        that prediction snapped to the nearest reward seen in the data, ``calibrated`` snapped to the reward whose
        real frames M's head predicts nearest, :meth:`reward_centers`); ``penalty``: the pessimistic dream's
        weight on M's reward spread over dropout masks (:class:`worldmodels.dream.DreamEnv`; 0: none);
        ``return_cap``: an episode ends when its return reaches it (None: no cap)."""
        from worldmodels.dream import DreamEnv

        initial = self.initial_latents(starts)
        reward = self.dream_reward(reward)
        values = self.reward_values() if reward in ("nearest", "calibrated") else ()
        centers = self.reward_centers() if reward == "calibrated" else ()
        dreams: dict[int, Any] = {}

        def make(batch: int):
            if batch not in dreams:
                dreams[batch] = DreamEnv(self.vae, self.mdrnn, initial, temperature, batch, self.device, max_steps,
                                         reward=reward, obs_mode=self.obs_mode, seed=seed,
                                         augmentations=augmentations, dropout=dropout, models=models,
                                         reward_values=values, reward_centers=centers, penalty=penalty,
                                         return_cap=return_cap,
                                         stream_ids=None if streams is None else torch.arange(batch) % streams)
            return dreams[batch]

        return make

    def dream_reward(self, reward: str) -> str:
        """What a dream of ``reward`` pays: ``auto`` is survival for Doom, M's predicted reward otherwise."""
        if reward not in DREAM_REWARDS:
            raise WorldModelsError(f"dream reward must be one of {', '.join(DREAM_REWARDS)}, got {reward!r}")
        if reward == "auto":
            return "survival" if self.family == "doom" else "predicted"
        return reward

    def _latents_file(self, what: str) -> Path:
        if self.latents_path is None:
            where = f" ({self.missing_latents} is not here)" if self.missing_latents else ""
            raise WorldModelsError(f"no latents file for {what}{where}; pass --latents")
        return self.latents_path

    def initial_latents(self, starts: str = "first") -> tuple[torch.Tensor, ...]:
        """The dream's starts. ``first`` (the paper's): (mu, logvar), each (E, Z), V's posterior of every
        collected episode's first frame, where M starts from h = 0. ``any``: (mu, logvar, h, c) of up to
        ANY_STARTS frames drawn uniformly (seed 0) from all collected frames, with (h, c) (E, H) the state M
        reaches teacher-forced (z = mu) on the real frames before each, so a dream can begin anywhere in an
        episode: near a sparse reward, which a dream from the first frame may never reach."""
        from worldmodels.data import open_latents

        if starts not in DREAM_STARTS:
            raise WorldModelsError(f"dream starts must be one of {', '.join(DREAM_STARTS)}, got {starts!r}")
        if starts not in self._starts:
            with open_latents(self._latents_file("the dream's initial frames")) as f:
                if starts == "any":
                    self._starts[starts] = any_starts(f, self.mdrnn, ANY_STARTS)
                else:
                    first = np.asarray(f.episodes["start"])
                    self._starts[starts] = tuple(torch.as_tensor(np.asarray(f.take(k, first))) for k in ("mu", "logvar"))
        return self._starts[starts]

    def reward_values(self) -> list[float]:
        """The distinct rewards of the collected frames (what the ``nearest`` dream reward snaps to)."""
        from worldmodels.data import open_latents

        with open_latents(self._latents_file("the rewards seen in the data")) as f:
            values = np.unique(np.asarray(f.read("reward", 0, f.n_frames), dtype=np.float64))
        if len(values) > NEAREST_MAX_VALUES:
            raise WorldModelsError(f"the nearest dream reward snaps M's reward to the rewards seen in the data, but "
                                   f"{self.env} has {len(values)} distinct ones (at most {NEAREST_MAX_VALUES}); use "
                                   "the predicted reward")
        return values.tolist()

    def reward_centers(self) -> list[float]:
        """Per reward of :meth:`reward_values` (in its order), the median of M's predicted reward on the collected
        frames that paid it, teacher-forced (z = mu): where M's head puts that reward, which the ``calibrated``
        dream reward snaps to (a rare reward of 10 that the head learned at ~3 still pays 10)."""
        from worldmodels.data import open_latents

        if self._centers is None:
            values = self.reward_values()
            with open_latents(self._latents_file("the rewards seen in the data")) as f:
                reward, predicted = teacher_forced_rewards(f, self.mdrnn)
            self._centers = [float(np.median(predicted[reward == v])) for v in values]
        return self._centers

    def real_latents(self, latents: str | Path | None = None) -> torch.Tensor:
        """Every collected frame's mu (N, Z), e.g. the bank of ``random_swing`` with ``source: real``."""
        from worldmodels.data import open_latents

        path = latents or self._latents_file("the real latents")
        with open_latents(path) as f:
            return torch.as_tensor(np.asarray(f.read("mu", 0, f.n_frames)))

    def dream_returns(self, dream: Any, params: np.ndarray, rollouts: int, seed: int, noise: float = 0.0) -> np.ndarray:
        """Returns (P, rollouts) of candidates ``params`` (P, N), all played in one batched dream (``noise``: C's
        actions explored, :func:`worldmodels.models.controller.rollout_dream`)."""
        from worldmodels.models.controller import BatchedController, rollout_dream

        ctrl = BatchedController(params, self.input_dim, self.action_map.output_dim, self.action_map.bias,
                                 rollouts, device=self.device)
        return rollout_dream(dream, ctrl, self.action_map, seed, noise=noise).reshape(len(params), rollouts)


@torch.no_grad()
def any_starts(src: Any, mdrnn: Any, limit: int, seed: int = 0, chunk: int = 256) -> tuple[torch.Tensor, ...]:
    """(mu, logvar, h, c) of up to ``limit`` frames of ``src`` (a latents file) drawn uniformly without
    replacement, in file order; (h, c) is M's state after the frames before it in its episode, teacher-forced
    with z = mu (an episode's first frame gets h = c = 0). Episodes are run ``chunk`` at a time, each only up
    to its last drawn frame."""
    from worldmodels.stages.train_mdrnn import actions_to_input

    rows = src.episodes[:]
    ep_start, ep_len = rows["start"].astype(np.int64), rows["length"].astype(np.int64)
    n = int(ep_len.sum())
    frames = np.sort(np.random.default_rng(seed).choice(n, size=min(limit, n), replace=False))
    episode = np.searchsorted(ep_start, frames, side="right") - 1  # the episode of each drawn frame
    offset = frames - ep_start[episode]
    desc = dict(src.attrs["action_space"])
    dtype, device = next(mdrnn.parameters()).dtype, next(mdrnn.parameters()).device
    H = mdrnn.hidden
    h_out, c_out = torch.zeros(len(frames), H, dtype=dtype), torch.zeros(len(frames), H, dtype=dtype)
    last = np.zeros(len(ep_start), np.int64)  # per episode: frames to consume before its last drawn frame
    np.maximum.at(last, episode, offset)
    eps = np.unique(episode)
    for lo in range(0, len(eps), chunk):
        group = eps[lo:lo + chunk]
        need = last[group]
        T = int(need.max())
        if T == 0:
            continue
        z = torch.zeros(len(group), T, mdrnn.z_dim, dtype=dtype, device=device)
        a = torch.zeros(len(group), T, mdrnn.action_dim, dtype=dtype, device=device)
        for j, e in enumerate(group):
            k = int(need[j])
            if k:
                s = int(ep_start[e])
                z[j, :k] = torch.from_numpy(np.asarray(src.read("mu", s, s + k))).to(dtype)
                a[j, :k] = torch.from_numpy(actions_to_input(np.asarray(src.read("action", s, s + k)), desc)).to(dtype)
        slot = {int(e): j for j, e in enumerate(group)}
        mine = np.flatnonzero(np.isin(episode, group))
        rows_of = np.array([slot[int(e)] for e in episode[mine]])
        state = mdrnn.initial_state(len(group))
        for t in range(1, T + 1):  # state after frames 0..t-1: the start state of frame t
            _, state = mdrnn.step(z[:, t - 1], a[:, t - 1], state)
            hit = offset[mine] == t
            if hit.any():
                h_out[mine[hit]] = state[0][rows_of[hit]].cpu()
                c_out[mine[hit]] = state[1][rows_of[hit]].cpu()
    mu, logvar = (torch.as_tensor(np.asarray(src.take(k, frames))) for k in ("mu", "logvar"))
    return mu, logvar, h_out, c_out


@torch.no_grad()
def teacher_forced_rewards(src: Any, mdrnn: Any, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(real reward, M's predicted reward) of every frame of ``src`` (a latents file), in file order: M run on
    each whole episode with z = mu and the actions taken, ``chunk`` episodes at a time (padded to the longest)."""
    from worldmodels.stages.train_mdrnn import actions_to_input

    rows = src.episodes[:]
    desc = dict(src.attrs["action_space"])
    dtype, device = next(mdrnn.parameters()).dtype, next(mdrnn.parameters()).device
    reward = np.asarray(src.read("reward", 0, src.n_frames), dtype=np.float64)
    predicted = np.empty(src.n_frames, np.float64)
    for lo in range(0, len(rows), chunk):
        group = rows[lo:lo + chunk]
        spans = list(zip(group["start"].astype(np.int64), group["length"].astype(np.int64)))
        T = int(group["length"].max())
        z = torch.zeros(len(group), T, mdrnn.z_dim, dtype=dtype, device=device)
        a = torch.zeros(len(group), T, mdrnn.action_dim, dtype=dtype, device=device)
        for j, (s, n) in enumerate(spans):
            z[j, :n] = torch.from_numpy(np.asarray(src.read("mu", s, s + n))).to(dtype)
            a[j, :n] = torch.from_numpy(actions_to_input(np.asarray(src.read("action", s, s + n)), desc)).to(dtype)
        out, _ = mdrnn(z, a)
        r = out.reward.double().cpu().numpy()
        for j, (s, n) in enumerate(spans):
            predicted[s:s + n] = r[j, :n]
    return reward, predicted


def load_world(run_dir: Path, obs_mode: str = "zh", device: torch.device | str = "cpu",
               latents: str | None = None) -> World:
    """V and M of ``run_dir`` on ``device``, with the env and options they were trained on."""
    from worldmodels.checkpoint import checkpoint_file, load_checkpoint
    from worldmodels.models.mdrnn import load_mdrnn
    from worldmodels.models.vae import load_vae

    run_dir = Path(run_dir)
    vae = load_vae(run_dir / "vae", device)
    mdrnn = load_mdrnn(run_dir / "mdrnn", device).eval()
    m_state = load_checkpoint(run_dir / "mdrnn", kind="mdrnn")
    mdrnn.checkpoint_id, mdrnn.checkpoint_path = m_state["id"], str(checkpoint_file(run_dir / "mdrnn").resolve())
    m_cfg = m_state.get("config") or {}
    latents = latents or (m_state.get("data") or {}).get("path") or m_cfg.get("latents")  # the file M learned from
    latents_path = Path(latents) if latents else None
    env, action_desc, env_kwargs = m_cfg.get("env"), m_cfg.get("action_space"), {}
    missing = None
    if latents_path is not None and not latents_path.is_file():
        # A shipped or moved run: M's checkpoint still tells the env and its action space, which is all the
        # real env needs; only a dream needs the latents (its initial frames), and says so then.
        missing, latents_path = latents_path, None
        if not env:
            raise WorldModelsError(f"latents file {missing} not found (pass --latents)")
    if latents_path is not None:
        from worldmodels.data import open_latents, open_rollouts

        with open_latents(latents_path) as f:
            env, action_desc = f.attrs.get("env", env), f.attrs.get("action_space", action_desc)
            rollouts = f.attrs.get("rollouts")
        if rollouts and Path(rollouts).is_file():
            with open_rollouts(rollouts) as f:
                env_kwargs = dict(f.attrs.get("env_kwargs") or {})
    if not env:
        raise WorldModelsError(f"cannot tell which env {run_dir / 'mdrnn'} was trained on; pass --latents")
    if not action_desc:
        from worldmodels.envs import describe_action_space, make

        probe = make(env)
        action_desc = describe_action_space(probe.action_space)
        probe.close()
    if vae.z_dim != getattr(mdrnn, "z_dim", vae.z_dim):
        raise WorldModelsError(f"V has z_dim {vae.z_dim} but M expects {mdrnn.z_dim}; retrain M on V's latents")
    world = World(run_dir, vae, mdrnn, str(env), env_kwargs, dict(action_desc), latents_path, obs_mode,
                  torch.device(device))
    world.missing_latents = missing
    return world
