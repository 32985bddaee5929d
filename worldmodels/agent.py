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
                      dropout: float = 0.0, models: Sequence[Any] = (), streams: int | None = None):
        """``batch -> DreamEnv`` of that many members (built once per batch size, per factory), with
        ``augmentations`` (:mod:`worldmodels.augment`) applied inside every step of its dreams, and a dream
        ensemble when asked: a ``dropout`` mask per member's episode, or one of M and ``models`` per episode.
        ``streams`` = E: member b draws from random stream b % E, so every block of E members (one candidate's
        rollouts) gets the same E episodes' draws, i.e. common random numbers across candidates (default: a
        stream per member)."""
        from worldmodels.dream import DreamEnv

        initial = self.initial_latents()
        reward = "survival" if self.family == "doom" else "predicted"
        dreams: dict[int, Any] = {}

        def make(batch: int):
            if batch not in dreams:
                dreams[batch] = DreamEnv(self.vae, self.mdrnn, initial, temperature, batch, self.device, max_steps,
                                         reward=reward, obs_mode=self.obs_mode, seed=seed,
                                         augmentations=augmentations, dropout=dropout, models=models,
                                         stream_ids=None if streams is None else torch.arange(batch) % streams)
            return dreams[batch]

        return make

    def initial_latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (E, Z): V's posterior of every collected episode's first frame (dream starts)."""
        from worldmodels.data import open_latents

        if self.latents_path is None:
            where = f" ({self.missing_latents} is not here)" if self.missing_latents else ""
            raise WorldModelsError(f"no latents file for the dream's initial frames{where}; pass --latents")
        with open_latents(self.latents_path) as f:
            starts = np.asarray(f.episodes["start"])
            mu, logvar = f.take("mu", starts), f.take("logvar", starts)
        return torch.as_tensor(np.asarray(mu)), torch.as_tensor(np.asarray(logvar))

    def real_latents(self, latents: str | Path | None = None) -> torch.Tensor:
        """Every collected frame's mu (N, Z), e.g. the bank of ``random_swing`` with ``source: real``."""
        from worldmodels.data import open_latents

        path = latents or self.latents_path
        if path is None:
            raise WorldModelsError("no latents file for the real latents; pass --latents")
        with open_latents(path) as f:
            return torch.as_tensor(np.asarray(f.read("mu", 0, f.n_frames)))

    def dream_returns(self, dream: Any, params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
        """Returns (P, rollouts) of candidates ``params`` (P, N), all played in one batched dream."""
        from worldmodels.models.controller import BatchedController, rollout_dream

        ctrl = BatchedController(params, self.input_dim, self.action_map.output_dim, self.action_map.bias,
                                 rollouts, device=self.device)
        return rollout_dream(dream, ctrl, self.action_map, seed).reshape(len(params), rollouts)


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
