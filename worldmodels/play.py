"""V, M and C playing a batch of real episodes at once: one V encode, one C and one M step per env step.

Used by real-env fitness (``train-controller --where real``), its periodic real scores, ``evaluate``,
and ``iterate``'s collection (every member recorded, with exploration noise: :func:`worker_rollouts`).
Work is cut into *batches* of ``env_batch`` episodes (members), each a task for a worker process
(:class:`worldmodels.parallel.WorkerPool`): :func:`init_worker` loads V, M and an
:class:`worldmodels.envs.batch.EnvBatch` once per worker from a plain-dict spec, and :func:`worker_batch`
plays one batch. The grouping depends on the batch size only, never on the number of workers, so
``--workers`` changes no result.

Everything an episode draws belongs to the episode, not to its slot: the env follows its seed, and z's
noise (z = mu + sigma * eps, sampled as in the authors' code) is a counter-based stream keyed by the
episode's seed and step (:mod:`worldmodels.dream.rng`). What can still differ with the batch size is
float rounding in V's batched convolutions; benchmarks/real_env.py measures how far that moves returns.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from worldmodels.errors import WorldModelsError
from worldmodels.models.controller import ActionMap, BatchedController, action_map_from_dict, controller_input


def noise_keys(seeds: Sequence[int]) -> torch.Tensor:
    """Per-episode keys (B,) int64 of z's noise streams, from the episodes' env seeds."""
    from worldmodels.dream.rng import stream_keys

    zero = torch.zeros(1, dtype=torch.int64)
    return torch.cat([stream_keys(int(s), zero) for s in seeds])


class BatchAgent:
    """V + M + C for B real episodes at once, each member with its own controller parameters."""

    def __init__(self, vae: torch.nn.Module, mdrnn: torch.nn.Module | None, action_map: ActionMap,
                 obs_mode: str, input_dim: int, sample_z: bool = True):
        from worldmodels.dream.rng import index_keys

        if obs_mode != "z" and mdrnn is None:
            raise ValueError(f"obs_mode {obs_mode!r} needs M")
        # A channels-last copy of V: frames arrive channels-last, and CPU convolutions run ~20 % faster so
        # (0.42 vs 0.53 ms a frame at batch 16, one thread); a copy, so the caller's V is left as it was.
        vae = copy.deepcopy(vae).to(memory_format=torch.channels_last)
        self.vae, self.mdrnn, self.action_map = vae, mdrnn, action_map
        self.obs_mode, self.input_dim, self.sample_z = obs_mode, input_dim, sample_z
        self.z_dim = int(vae.z_dim)
        self.hidden = int(mdrnn.lstm.hidden_size) if mdrnn is not None else 0
        self.device = next(vae.parameters()).device  # workers load V and M on the CPU; any device works
        self.idx_keys = index_keys(self.z_dim, self.device)

    def encode(self, frames: np.ndarray, keys: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, 64, 64, 3) -> z (B, Z): mu, plus sigma * eps from each episode's stream at step t."""
        from worldmodels.models.vae import frames_to_tensor

        return self.sample(*self.vae.encode(frames_to_tensor(frames, self.device)), keys, t)

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor, keys: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z (B, Z) from V's posterior (mu, logvar) (B, Z) of the episodes of ``keys`` at steps ``t``."""
        from worldmodels.dream.rng import uniforms

        if not self.sample_z:
            return mu
        eps = torch.special.ndtri(uniforms(keys, t, self.idx_keys, mu.dtype))
        return mu + torch.exp(0.5 * logvar) * eps

    @torch.no_grad()
    def play(self, envs: Any, params: np.ndarray, seeds: Sequence[int], max_steps: int | None = None,
             record: Sequence[bool] = (), stall_steps: int | None = None, noise: float = 0.0) -> list[dict[str, Any]]:
        """Play one episode per member: ``params`` (B, N) on env seeds ``seeds`` (B,).

        Returns per member ``return``, ``length``, ``level``, ``stalled``, ``top_action`` (discrete actions:
        the fraction of its steps on its most common action, a policy diagnostic; else None) and ``frames`` (uint8
        (T + 1, 64, 64, 3) for members with ``record[i]``, else None), and for recorded members what a
        rollouts file stores of each step: ``actions`` (T, ...) as sent to the env, ``rewards`` (T,),
        ``terminated`` and ``truncated`` (T,) (exactly one of them set, at the last step; else None), and what
        a latents file adds: V's ``mu`` and ``logvar`` (T, Z) float32 of each frame C saw.

        ``noise`` > 0 explores (:func:`explore`): C's actions get noise from a stream of the episode's seed,
        and M is fed the actions taken.

        ``stall_steps`` (needs ``max_steps``): end a member's episode once it has gone that many steps
        without a positive reward, and credit its remaining steps at the stretch's own reward rate. In
        CarRacing a stretch without a new tile earns exactly -0.1 a step, so the credited return is the
        full episode's unless the car would have found the road again later; fitness only, never scores.
        """
        from worldmodels.models.vae import frames_to_tensor

        if stall_steps is not None and (max_steps is None or stall_steps < 1):
            raise ValueError("stall_steps needs max_steps and must be >= 1")
        n = len(seeds)
        dev = self.device
        ctrl = BatchedController(np.asarray(params), self.input_dim, self.action_map.output_dim,
                                 self.action_map.bias, device=dev)
        obs, levels = envs.reset(seeds)
        keys = noise_keys(seeds).to(dev)
        t = torch.zeros(n, dtype=torch.int64, device=dev)
        state = ((torch.zeros(n, self.hidden, device=dev), torch.zeros(n, self.hidden, device=dev))
                 if self.obs_mode != "z" else None)
        z = torch.zeros(n, self.z_dim, device=dev)
        returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
        since_gain, stretch = np.zeros(n, dtype=np.int64), np.zeros(n)  # steps and reward since a reward > 0
        stalled = np.zeros(n, dtype=bool)
        counts = np.zeros((n, self.action_map.n_actions if self.action_map.discrete else 0), dtype=np.int64)
        record = list(record) + [False] * (n - len(record))
        frames = {i: [obs[i]] for i in range(n) if record[i]}
        steps: dict[int, list[tuple]] = {i: [] for i in range(n) if record[i]}  # (action, reward, term, trunc)
        posteriors: dict[int, list[tuple]] = {i: [] for i in range(n) if record[i]}  # (mu, logvar)
        rngs = [np.random.default_rng(np.random.SeedSequence(int(s), spawn_key=(2,))) for s in seeds] if noise else []
        live = np.arange(n)
        while len(live):
            ids = torch.as_tensor(live, device=dev)
            mu, logvar = self.vae.encode(frames_to_tensor(obs, dev))
            z[ids] = self.sample(mu, logvar, keys[ids], t[ids])
            action = self.action_map(ctrl(controller_input(z, state, self.obs_mode)))  # (B, ...)
            if noise:
                action[ids] = explore(action[ids], self.action_map, noise, [rngs[i] for i in live])
            if state is not None:
                _, state = self.mdrnn.step(z, self.action_map.model_input(action), state)
            env_actions = [self.action_map.env_action(action[i]) for i in live]
            obs, reward, terminated, truncated = envs.step(env_actions, live)
            if counts.shape[1]:
                np.add.at(counts, (live, np.asarray(env_actions)), 1)
            returns[live] += reward
            lengths[live] += 1
            t[ids] += 1
            done = terminated | truncated
            if max_steps is not None:
                done |= lengths[live] >= max_steps
            if stall_steps is not None:
                gained = np.asarray(reward) > 0
                since_gain[live] = np.where(gained, 0, since_gain[live] + 1)
                stretch[live] = np.where(gained, 0.0, stretch[live] + reward)
                stall = ~done & (since_gain[live] >= stall_steps)
                ended = live[stall]
                returns[ended] += stretch[ended] / since_gain[ended] * (max_steps - lengths[ended])
                stalled[ended] = True
                done |= stall
            for k, i in enumerate(live):
                if record[i]:
                    posteriors[i].append((mu[k], logvar[k]))
                    frames[i].append(obs[k])
                    # an end is terminated or truncated, never both (docs/data.md)
                    steps[i].append((env_actions[k], reward[k], bool(terminated[k]),
                                     bool(done[k] and not terminated[k])))
            obs, live = obs[~done], live[~done]
        results = []
        for i in range(n):
            trace = dict.fromkeys(("actions", "rewards", "terminated", "truncated", "mu", "logvar"))
            if record[i]:
                a, r, term, trunc = zip(*steps[i])
                mus, logvars = zip(*posteriors[i])
                trace = {"actions": np.asarray(a), "rewards": np.asarray(r, np.float32),
                         "terminated": np.asarray(term), "truncated": np.asarray(trunc),
                         "mu": torch.stack(mus).float().cpu().numpy(),
                         "logvar": torch.stack(logvars).float().cpu().numpy()}
            results.append({"return": float(returns[i]), "length": int(lengths[i]), "level": int(levels[i]),
                            "stalled": bool(stalled[i]),
                            "top_action": float(counts[i].max() / lengths[i]) if counts.shape[1] and lengths[i] else None,
                            "frames": np.stack(frames[i]) if record[i] else None,
                            **trace})
        return results


def check_noise(noise: float, env: str, discrete: bool, flag: str = "--noise") -> None:
    """A one-line error unless ``noise`` is a valid exploration noise for ``env``'s actions (:func:`explore`)."""
    if not np.isfinite(noise) or noise < 0 or (discrete and noise > 1):
        raise WorldModelsError(f"{flag} must be >= 0 (for {env}'s discrete actions: a probability, at most 1), "
                               f"got {noise}")


def explore(action: torch.Tensor, action_map: ActionMap, noise: float,
            rngs: Sequence[np.random.Generator]) -> torch.Tensor:
    """C's actions (B, ...) with exploration noise, member b's drawn from ``rngs[b]`` (its episode's stream):
    continuous, Gaussian noise of std ``noise`` added and the sum clipped to the action space; discrete, with
    probability ``noise`` a uniformly random action instead."""
    if action_map.discrete:
        draws = [(rng.random() < noise, rng.integers(action_map.n_actions)) for rng in rngs]
        swap = torch.tensor([d[0] for d in draws], device=action.device)
        random = torch.tensor([int(d[1]) for d in draws], dtype=action.dtype, device=action.device)
        return torch.where(swap, random, action)
    eps = np.stack([rng.normal(0.0, noise, tuple(action.shape[1:])) for rng in rngs])  # (B, A)
    return action_map.clip(action + torch.as_tensor(eps, dtype=action.dtype, device=action.device))


# Per-process state of a worker: the agent and its envs, loaded once by init_worker.
_WORKER: dict[str, Any] = {}


def init_worker(spec: dict[str, Any]) -> None:
    """Load V, M (CPU) and the envs described by ``spec`` into this process.

    ``spec``: ``vae``, ``mdrnn`` (checkpoint paths; mdrnn may be None for obs_mode z), ``env``,
    ``env_backend`` (resolved: reference or fast), ``env_kwargs``, ``obs_mode``, ``input_dim``,
    ``action_map`` (dict), ``max_steps``.
    """
    from worldmodels.envs import make_batch
    from worldmodels.models.vae import load_vae
    from worldmodels.parallel import close_at_exit

    vae = load_vae(spec["vae"], "cpu")
    mdrnn = None
    if spec["obs_mode"] != "z":
        from worldmodels.models.mdrnn import load_mdrnn

        mdrnn = load_mdrnn(spec["mdrnn"], "cpu").eval()
    envs = make_batch(spec["env"], spec.get("env_backend", "reference"), **spec.get("env_kwargs", {}))
    close_at_exit(envs)
    _WORKER.clear()
    _WORKER.update(spec=spec, envs=envs, agent=BatchAgent(vae, mdrnn, action_map_from_dict(spec["action_map"]),
                                                          spec["obs_mode"], spec["input_dim"]))


Task = tuple[np.ndarray, list[int], list[bool], "int | None", float]  # params (B, N), seeds, record, stall_steps, noise


def worker_rollouts(task: tuple[np.ndarray, Sequence[int], float]) -> list[dict[str, Any]]:
    """``(params (B, N), seeds (B,), noise)`` -> :meth:`BatchAgent.play`'s results with every member recorded
    and exploration ``noise``, in a worker set up by :func:`init_worker` (``worldmodels iterate``'s collection)."""
    params, seeds, noise = task
    with one_torch_thread():
        return _WORKER["agent"].play(_WORKER["envs"], params, seeds, _WORKER["spec"].get("max_steps"),
                                     [True] * len(seeds), noise=noise)


def worker_batch(task: Task) -> list[dict[str, Any]]:
    """``(params (B, N), seeds (B,), record (B,), stall_steps, noise)`` -> :meth:`BatchAgent.play`'s results,
    in a worker set up by :func:`init_worker`."""
    params, seeds, record, stall_steps, noise = task
    with one_torch_thread():
        return _WORKER["agent"].play(_WORKER["envs"], params, seeds, _WORKER["spec"].get("max_steps"), record,
                                     stall_steps, noise)


def batch_tasks(params: np.ndarray, seeds: Sequence[int], env_batch: int, record: Sequence[bool] = (),
                stall_steps: int | None = None, noise: float = 0.0) -> list[Task]:
    """Members (params[i], seeds[i]) cut into consecutive tasks of ``env_batch`` members (``noise``: C's
    actions explored as in :meth:`BatchAgent.play`)."""
    params = np.asarray(params)
    record = list(record) + [False] * (len(seeds) - len(record))
    return [(params[i:i + env_batch], [int(s) for s in seeds[i:i + env_batch]], record[i:i + env_batch],
             stall_steps, float(noise)) for i in range(0, len(seeds), env_batch)]


def play_members(pool: Any, params: np.ndarray, seeds: Sequence[int], env_batch: int,
                 stall_steps: int | None = None, noise: float = 0.0) -> tuple[np.ndarray, int]:
    """Returns (M,) of members (params[i], seeds[i]), played in batches on ``pool``'s workers (``noise``: C's
    actions explored), and the number of env steps they took."""
    tasks = batch_tasks(params, seeds, env_batch, stall_steps=stall_steps, noise=noise)
    results = [r for batch in pool.map(worker_batch, tasks) for r in batch]
    return np.array([r["return"] for r in results]), sum(r["length"] for r in results)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run a worker's V/M/C steps on one torch thread, then restore the caller's setting.

    Small batches of 64x64 frames gain nothing from a second thread: on a loaded 2-core machine one
    encode took 236 ms with 2 threads and 3.6 ms with 1. Pool and ray workers already run on one
    thread (this is then a no-op); the inline path (workers=0) plays in the caller's process, whose
    other work (a batched dream) keeps its threads once the batch is over.
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)
