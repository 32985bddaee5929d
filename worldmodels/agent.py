"""The full World Models agent in a real env: V encodes each frame, C acts on [z, h], M updates h.

Used by real-env fitness (``train-controller --where real``) and by ``evaluate``. Both run episodes in
worker processes (:class:`worldmodels.parallel.WorkerPool`): :func:`init_worker` loads V, M and the env
once per worker from a plain-dict spec, and :func:`worker_episode` plays one seeded episode with the
parameters it is given. Everything an episode draws (the env's randomness, the sampled z) follows from
its seed, so per-episode results do not depend on which worker ran it or how many workers there were.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from worldmodels.errors import WorldModelsError
from worldmodels.models.controller import ActionMap, Controller, action_map_from_dict, controller_input


class Agent:
    """V + M + C acting in a real env, one frame at a time (batch of one)."""

    def __init__(self, vae: torch.nn.Module, mdrnn: torch.nn.Module | None, controller: Controller,
                 action_map: ActionMap, obs_mode: str, sample_z: bool = True):
        self.vae, self.mdrnn, self.controller = vae, mdrnn, controller
        self.action_map, self.obs_mode, self.sample_z = action_map, obs_mode, sample_z
        z_dim = vae.z_dim
        n_state = {"z": 0, "zh": 1, "zch": 2}[obs_mode]
        self.hidden = (controller.input_dim - z_dim) // n_state if n_state else 0
        if obs_mode != "z" and mdrnn is None:
            raise ValueError(f"obs_mode {obs_mode!r} needs M")
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.generator = torch.Generator()

    def reset(self, seed: int) -> None:
        """Zero M's state and reseed the z sampling (z = mu + sigma * eps, as in the authors' code)."""
        self.state = (torch.zeros(1, self.hidden), torch.zeros(1, self.hidden)) if self.hidden else None
        self.generator.manual_seed(int(seed))

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> Any:
        """uint8 frame (64, 64, 3) -> the env action; advances M by one step."""
        from worldmodels.models.vae import frames_to_tensor

        # np.array copies: envs may hand out read-only frames, which torch warns about
        mu, logvar = self.vae.encode(frames_to_tensor(np.array(obs[None])))  # (1, Z) each
        z = mu
        if self.sample_z:
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=self.generator)
        action = self.action_map(self.controller(controller_input(z, self.state, self.obs_mode)))  # (1, ...)
        if self.obs_mode != "z":
            _, self.state = self.mdrnn.step(z, self.action_map.model_input(action), self.state)
        return self.action_map.env_action(action[0])


def run_episode(env: Any, agent: Agent, seed: int, max_steps: int | None = None,
                record: bool = False) -> dict[str, Any]:
    """Play one episode; returns ``return``, ``length``, ``level`` (ProcGen level or -1) and ``frames``
    (uint8 (T, 64, 64, 3) when ``record``, else None)."""
    obs, info = env.reset(seed=int(seed))
    agent.reset(seed)
    total, steps, frames = 0.0, 0, [obs] if record else None
    while max_steps is None or steps < max_steps:
        obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
        total += float(reward)
        steps += 1
        if record:
            frames.append(obs)
        if terminated or truncated:
            break
    return {"return": total, "length": steps, "level": int(info.get("level", -1)),
            "frames": np.stack(frames) if record else None}


# Per-process state of a worker: the models and the env, loaded once by init_worker.
_WORKER: dict[str, Any] = {}


def init_worker(spec: dict[str, Any]) -> None:
    """Load V, M (CPU) and the env described by ``spec`` into this process.

    ``spec``: ``vae``, ``mdrnn`` (checkpoint paths; mdrnn may be None for obs_mode z), ``env``,
    ``env_kwargs``, ``obs_mode``, ``input_dim``, ``action_map`` (dict), ``max_steps``.
    """
    from worldmodels.envs import make
    from worldmodels.models.vae import load_vae

    vae = load_vae(spec["vae"], "cpu")
    mdrnn = None
    if spec["obs_mode"] != "z":
        from worldmodels.models.mdrnn import load_mdrnn

        mdrnn = load_mdrnn(spec["mdrnn"], "cpu").eval()
    action_map = action_map_from_dict(spec["action_map"])
    controller = Controller(spec["input_dim"], action_map.output_dim, action_map.bias)
    from worldmodels.parallel import close_at_exit

    env = make(spec["env"], **spec.get("env_kwargs", {}))
    close_at_exit(env)
    _WORKER.clear()
    _WORKER.update(spec=spec, env=env,
                   agent=Agent(vae, mdrnn, controller, action_map, spec["obs_mode"]))


def worker_episode(task: tuple[np.ndarray, int, bool]) -> dict[str, Any]:
    """``(params, seed, record)`` -> :func:`run_episode`'s result, in a process set up by init_worker."""
    params, seed, record = task
    agent: Agent = _WORKER["agent"]
    agent.controller.set_flat(params)
    with one_torch_thread():
        return run_episode(_WORKER["env"], agent, seed, _WORKER["spec"].get("max_steps"), record)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run batch-of-one V/M/C steps on one torch thread, then restore the caller's setting.

    A 64x64 frame is far too small to split: on a loaded 2-core machine one encode took 236 ms with
    2 threads and 3.6 ms with 1. Pool and ray workers already run on one thread (this is then a
    no-op); the inline path (workers=0) plays in the caller's process, whose other work (a batched
    dream) keeps its threads once the episode is over.
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


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

    def worker_spec(self, max_steps: int | None, levels: str = "train") -> dict[str, Any]:
        """The plain-dict spec :func:`init_worker` loads in each worker process."""
        return {"vae": self.vae.checkpoint_path, "mdrnn": self.mdrnn.checkpoint_path, "env": self.env,
                "env_kwargs": self.env_options(levels), "max_steps": max_steps, **self.controller_spec()}

    def dream_factory(self, temperature: float, max_steps: int, seed: int, augmentations: Sequence[Any] = ()):
        """``batch -> DreamEnv`` of that many members (built once per batch size, per factory), with
        ``augmentations`` (:mod:`worldmodels.augment`) applied inside every step of its dreams."""
        from worldmodels.dream import DreamEnv

        initial = self.initial_latents()
        reward = "survival" if self.family == "doom" else "predicted"
        dreams: dict[int, Any] = {}

        def make(batch: int):
            if batch not in dreams:
                dreams[batch] = DreamEnv(self.vae, self.mdrnn, initial, temperature, batch, self.device, max_steps,
                                         reward=reward, obs_mode=self.obs_mode, seed=seed,
                                         augmentations=augmentations)
            return dreams[batch]

        return make

    def initial_latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (E, Z): V's posterior of every collected episode's first frame (dream starts)."""
        from worldmodels.data import open_latents

        if self.latents_path is None:
            raise WorldModelsError("no latents file for the dream's initial frames; pass --latents")
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
    if latents_path is not None:
        from worldmodels.data import open_latents, open_rollouts

        if not latents_path.is_file():
            raise WorldModelsError(f"latents file {latents_path} not found (pass --latents)")
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
    return World(run_dir, vae, mdrnn, str(env), env_kwargs, dict(action_desc), latents_path, obs_mode,
                 torch.device(device))
