"""Roll out a random policy (or, with --controller, a trained C) in a real env and write every episode to one
HDF5 file (rollouts.h5).

Worker processes step the envs, env_batch episodes at a time (one envpool of that many envs on the
fast backend, the default for CarRacing where envpool is installed); finished episodes come back to
this process, which writes them in episode order, so the file is the same for any number of workers
and any batch size. The file records the env backend, and a rerun on another backend is refused. Episode i uses the env seed
episode_seed(seed, i, "collect") and a policy generator seeded from it. Rerunning the same command
resumes from the episodes already in the file; a killed run keeps every episode it committed.

  worldmodels collect --env carracing --episodes 10000 --workers 16
  worldmodels collect --env procgen:coinrun --episodes 500 --env-kwargs '{num_levels: 200}'
  worldmodels collect --env carracing --episodes 500 --controller results/carracing/real-zh --noise 0.1
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from worldmodels.config import option
from worldmodels.data import LATENTS, ROLLOUTS, EpisodeWriter
from worldmodels.envs import ENV_BACKENDS
from worldmodels.errors import WorldModelsError
from worldmodels.parallel import BACKENDS, WorkerPool
from worldmodels.policies import POLICIES, make_policy, resolve_policy


@dataclasses.dataclass
class Config:
    env: str = option("carracing", "env: carracing, doom-takecover or procgen:<game>")
    episodes: int = option(100, "episodes the file should hold; a rerun resumes up to this count")
    workers: int = option(2, "worker processes stepping envs (0: step them in this process)")
    out: str = option("", "output file; empty means data/<env>/rollouts.h5 (':' in the env name becomes '-')")
    seed: int = option(0, "run seed; episode i uses env seed episode_seed(seed, i, 'collect')")
    max_steps: Optional[int] = option(None, "cap on frames per episode (truncated there); none: the env's own limit")
    policy: str = option("auto", "brownian (continuous), random (i.i.d.), repeat (held 1-10 frames), "
                         "auto (brownian for Box, repeat for Discrete)", choices=POLICIES)
    env_kwargs: dict = option(factory=dict, help="keyword arguments for the env, as YAML: '{num_levels: 200}'")
    controller: Optional[str] = option(None, "a run folder whose C drives (with its own V and M) instead of a random "
                                             "policy, e.g. an expert for M's data; its env and env kwargs are used")
    noise: float = option(0.1, "with --controller: std of Gaussian noise on its continuous actions (clipped to the "
                               "action space); discrete actions: probability of a uniformly random one")
    param_noise: float = option(0.0, "with --controller: each episode is played by C's parameters plus this std "
                                     "of Gaussian noise, drawn afresh per episode (from its seed): exploration "
                                     "like CMA-ES's candidates around C, beside --noise on the actions")
    fresh: bool = option(False, "delete an existing rollouts file at --out and start over")
    env_backend: str = option("auto", "env simulator: fast (envpool, CarRacing), reference (gymnasium/vizdoom/"
                              "procgen), or auto (fast where available)", choices=ENV_BACKENDS)
    env_batch: int = option(8, "episodes each worker steps at once (memory vs per-call overhead; the file "
                               "is the same for any value)")
    backend: str = option("local", "where workers run: local processes, or a ray cluster", choices=BACKENDS)
    ray_address: str = option("", "ray cluster address for --backend ray (empty: start a local ray)")


def default_out(env: str) -> Path:
    return Path("data") / env.replace(":", "-") / "rollouts.h5"


# Each worker's envs (an EnvBatch), created once by the pool's initializer and reused for every batch.
_ENVS: Any = None


def _init_envs(env_name: str, backend: str, env_kwargs: dict) -> None:
    global _ENVS
    from worldmodels.envs import make_batch
    from worldmodels.parallel import close_at_exit

    _ENVS = make_batch(env_name, backend, **env_kwargs)
    close_at_exit(_ENVS)


def rollouts(envs: Any, policy_name: str, space: dict, max_steps: int | None, seeds: list[int]) -> list[dict[str, Any]]:
    """One episode per seed, stepped in lockstep on ``envs`` (an EnvBatch).

    ``obs[t]`` is what the policy saw when it chose ``action[t]``; reward and flags follow it. Each
    episode's policy draws from a stream of its own seed, so an episode is the same in any batch.
    """
    obs, levels = envs.reset(seeds)
    # A stream of its own, so the policy's noise is not the env's (gymnasium seeds its RNG from `seed` too).
    policies = [make_policy(policy_name, space, np.random.default_rng(np.random.SeedSequence(s, spawn_key=(1,))))
                for s in seeds]
    for policy in policies:
        policy.reset()
    n = len(seeds)
    frames, actions, rewards, terms, truncs = ([[] for _ in range(n)] for _ in range(5))
    live = np.arange(n)
    while len(live):
        step_actions = [policies[i].act(obs[k]) for k, i in enumerate(live)]
        next_obs, reward, terminated, truncated = envs.step(step_actions, live)
        for k, i in enumerate(live):
            frames[i].append(obs[k])
            actions[i].append(step_actions[k])
            rewards[i].append(reward[k])
            # An end is terminated or truncated, never both: gymnasium's time limit also flags a step that ended
            # the episode for real, and that is a termination.
            truncated[k] = not terminated[k] and (truncated[k] or (max_steps is not None and len(frames[i]) >= max_steps))
            terms[i].append(bool(terminated[k]))
            truncs[i].append(bool(truncated[k]))
        done = terminated | truncated
        obs, live = next_obs[~done], live[~done]
    discrete = space["type"] == "discrete"
    return [{"arrays": dict(obs=np.stack(frames[i]),  # (L, 64, 64, 3) uint8
                            action=np.asarray(actions[i], dtype=np.int64 if discrete else np.float32),  # (L,) or (L, A)
                            reward=np.asarray(rewards[i], dtype=np.float32),
                            terminated=np.asarray(terms[i], dtype=bool), truncated=np.asarray(truncs[i], dtype=bool)),
             "seed": seeds[i], "level": int(levels[i])} for i in range(n)]


def rollout(env: Any, policy_name: str, space: dict, max_steps: int | None, seed: int) -> dict[str, Any]:
    """One episode of a single gymnasium env (see :func:`rollouts`)."""
    from worldmodels.envs.batch import ReferenceBatch

    return rollouts(ReferenceBatch("", envs=[env]), policy_name, space, max_steps, [seed])[0]


def _close_inline_envs() -> None:
    global _ENVS
    if _ENVS is not None:  # only workers=0 makes the envs in this process
        _ENVS.close()
        _ENVS = None


def _collect_batch(policy_name: str, space: dict, max_steps: int | None, seeds: list[int]) -> list[dict[str, Any]]:
    return rollouts(_ENVS, policy_name, space, max_steps, seeds)


def write_episodes(writer: EpisodeWriter, pool: WorkerPool, policy: str, space: dict, max_steps: int | None,
                   seeds: list[int], bar: tqdm | None = None, env_batch: int = 1) -> None:
    """Roll out one episode per seed on the pool's workers, ``env_batch`` per task, and append them to
    ``writer`` in seed order."""
    fn = functools.partial(_collect_batch, policy, space, max_steps)
    batches = [seeds[i:i + env_batch] for i in range(0, len(seeds), env_batch)]
    start, frames = time.perf_counter(), 0
    for _, episodes in pool.imap(fn, batches, ordered=True):  # episode order: the same file for any W
        for episode in episodes:
            writer.append(episode["arrays"], seed=episode["seed"], level=episode["level"])
            frames += len(episode["arrays"]["obs"])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.set_postfix_str(f"{frames / (time.perf_counter() - start):.0f} frames/s")


POLICY_CONTROLLER = "controller+noise"
PARAM_NOISE_STREAM = 0x9A7A  # the perturbations' own random stream, apart from the env's and the action noise's


def perturbed(params: np.ndarray, seed: int, scale: float) -> np.ndarray:
    """C's parameters for the episode of env seed ``seed``: ``params + scale * N(0, I)`` from a stream of that
    seed alone, so a resumed or replayed collection plays every episode with the same controller."""
    if scale == 0:
        return params
    return params + scale * np.random.default_rng([PARAM_NOISE_STREAM, int(seed)]).standard_normal(params.shape)


def controller_episodes(run_dir: Path, out: Path, seeds: list[int], noise: float, max_steps: int | None,
                        env_backend: str, env_batch: int, workers: int, attrs: dict[str, Any], fresh: bool = False,
                        desc: str = "collect", backend: str = "local", ray_address: str | None = None,
                        param_noise: float = 0.0, latents: Optional[Path] = None) -> dict[str, Any]:
    """One episode per seed played by the C of ``run_dir`` (the parameters ``evaluate`` picks, each episode's
    perturbed by ``param_noise``: :func:`perturbed`) with exploration ``noise`` on its actions, appended to
    ``out`` in seed order (a rerun resumes: episode i always plays seeds[i]). The file's attrs add ``attrs`` to
    the env, the policy (controller+noise), the controller's id and generation and both noises.

    ``latents``: also write V's posteriors of the frames, which C's V computed to play them, into that latents
    file, the one ``worldmodels encode`` would write with ``run_dir``'s V (it saves encoding every frame
    again; the file is then complete, and ``encode`` finds nothing left to do)."""
    from worldmodels.agent import load_world
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.envs import resolve_backend
    from worldmodels.play import check_noise, init_worker, worker_rollouts
    from worldmodels.stages.evaluate import controller_params
    from worldmodels.stages.train_controller import n_workers

    state = load_checkpoint(run_dir / "controller", kind="controller")
    params, _ = controller_params(state, "auto")
    world = load_world(run_dir, state["identity"]["obs_mode"], "cpu")
    resolved = resolve_backend(world.env, env_backend)
    spec = world.worker_spec(max_steps, levels="train", env_backend=resolved)
    discrete = world.action_desc["type"] == "discrete"
    check_noise(noise, world.env, discrete)
    if not np.isfinite(param_noise) or param_noise < 0:
        raise WorldModelsError(f"--param-noise must be >= 0, got {param_noise}")
    attrs = dict(env=world.env, env_kwargs=spec["env_kwargs"], action_space=world.action_desc,
                 policy=POLICY_CONTROLLER, max_steps=max_steps, controller_id=state["id"],
                 controller_generation=int(state["generation"]), noise=noise, **attrs)
    if param_noise:  # files collected before the option carry no key (as this one, with none)
        attrs["param_noise"] = param_noise
    if resolved != "reference":
        attrs["env_backend"] = resolved
    if latents is not None:
        _latents_caught_up(out, latents, run_dir, fresh)
    with contextlib.ExitStack() as files:
        writer = files.enter_context(EpisodeWriter(out, ROLLOUTS, attrs, fresh=fresh))
        done = writer.n_episodes
        posteriors = None
        if latents is not None:
            from worldmodels.stages.encode import latents_attrs

            posteriors = files.enter_context(EpisodeWriter(
                latents, LATENTS, latents_attrs(attrs, out, world.vae, world.vae.checkpoint_epoch)))
            if posteriors.n_episodes != done:  # only another writer between the catch-up and here could do it
                raise WorldModelsError(f"{latents} holds {posteriors.n_episodes} episodes, {out} {done}")
        # Batches are cut from the whole list (never by what is done), so a resumed batch plays the same seeds.
        tasks = []
        for start in range(0, len(seeds), env_batch):
            members = [i for i in range(start, min(start + env_batch, len(seeds))) if i >= done]
            if members:
                tasks.append((np.stack([perturbed(params, seeds[i], param_noise) for i in members]),
                               [seeds[i] for i in members], noise))
        if tasks:
            with WorkerPool(n_workers(workers), init_worker, (spec,), what="collection", backend=backend,
                            ray_address=ray_address) as pool, \
                    tqdm(total=len(seeds), initial=done, unit="ep", desc=desc, dynamic_ncols=True) as bar:
                for j, results in pool.imap(worker_rollouts, tasks):
                    for seed_i, result in zip(tasks[j][1], results):
                        n = result["length"]
                        steps = {"action": result["actions"].astype(np.int64 if discrete else np.float32),
                                 "reward": result["rewards"], "terminated": result["terminated"],
                                 "truncated": result["truncated"]}
                        writer.append({"obs": result["frames"][:n], **steps}, seed=seed_i, level=result["level"])
                        if posteriors is not None:  # after the rollouts: a kill between leaves it one behind
                            posteriors.append({"mu": result["mu"], "logvar": result["logvar"], **steps},
                                              seed=seed_i, level=result["level"])
                        bar.update(1)
        return {"path": str(out), "episodes": writer.n_episodes, "frames": writer.n_frames,
                "new_episodes": writer.n_episodes - done, "controller_id": state["id"], "env_backend": resolved}


def _latents_caught_up(rollouts: Path, latents: Path, run_dir: Path, fresh: bool) -> None:
    """Before collection appends to both files in step: start ``latents`` afresh with ``rollouts`` (``fresh``),
    or encode the episodes a killed collection wrote to ``rollouts`` but not yet to ``latents``."""
    from worldmodels.data import open_latents, open_rollouts
    from worldmodels.stages import encode

    if fresh:
        latents.unlink(missing_ok=True)  # it mirrors rollouts, which start afresh too
        return
    if not rollouts.is_file():
        if latents.is_file():
            raise WorldModelsError(f"{latents} exists without {rollouts}, whose frames it should encode; move it away")
        return
    with open_rollouts(rollouts) as f:
        behind = f.n_episodes
    if latents.is_file():
        with open_latents(latents) as f:
            behind -= f.n_episodes
    if behind:
        encode.run(encode.Config(data=str(rollouts), vae=str(run_dir / "vae"), out=str(latents), device="cpu"))


def _check(cfg: Config) -> None:
    if cfg.episodes < 1:
        raise WorldModelsError(f"--episodes must be at least 1, got {cfg.episodes}")
    if cfg.env_batch < 1:
        raise WorldModelsError(f"--env-batch must be at least 1, got {cfg.env_batch}")
    if cfg.workers < 0:
        raise WorldModelsError(f"--workers must be 0 or more, got {cfg.workers}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise WorldModelsError(f"--max-steps must be at least 1 (or none), got {cfg.max_steps}")
    if cfg.param_noise and not cfg.controller:
        raise WorldModelsError("--param-noise perturbs a controller's parameters; it needs --controller")


def run(cfg: Config) -> dict[str, Any]:
    """Collect up to ``cfg.episodes`` episodes into ``cfg.out``; returns a summary (path, episodes, frames...)."""
    from worldmodels.envs import describe_action_space, env_family, episode_seed, make, resolve_backend

    _check(cfg)
    env_family(cfg.env)  # an unknown name fails here, listing the known ones
    episode_seed(cfg.seed, cfg.episodes - 1, "collect")  # and so does a seed or count out of range
    if cfg.controller:
        return _run_controller(cfg)
    backend = resolve_backend(cfg.env, cfg.env_backend)
    probe = make(cfg.env, backend, **cfg.env_kwargs)  # fails early on bad env kwargs, and tells the action space
    space = describe_action_space(probe.action_space)
    probe.close()
    policy = resolve_policy(cfg.policy, space)
    out = Path(cfg.out) if cfg.out else default_out(cfg.env)
    attrs = dict(env=cfg.env, env_kwargs=cfg.env_kwargs, action_space=space, policy=policy, seed=cfg.seed,
                 max_steps=cfg.max_steps)
    if backend != "reference":  # files from before backends existed, with no such attribute, are reference ones
        attrs["env_backend"] = backend

    with EpisodeWriter(out, ROLLOUTS, attrs, fresh=cfg.fresh) as writer:
        first, first_frames = writer.n_episodes, writer.n_frames
        seeds = [episode_seed(cfg.seed, i, "collect") for i in range(first, cfg.episodes)]
        start = time.perf_counter()
        if seeds:  # a finished file needs no workers
            with tqdm(total=cfg.episodes, initial=first, unit="ep", desc=f"collect {cfg.env}",
                      dynamic_ncols=True) as bar:
                try:
                    with WorkerPool(cfg.workers, initializer=_init_envs,
                                    initargs=(cfg.env, backend, cfg.env_kwargs), what="collection",
                                    backend=cfg.backend, ray_address=cfg.ray_address or None) as pool:
                        write_episodes(writer, pool, policy, space, cfg.max_steps, seeds, bar, cfg.env_batch)
                finally:
                    _close_inline_envs()
        seconds = time.perf_counter() - start
        new_frames = writer.n_frames - first_frames
        summary = {"path": str(out), "episodes": writer.n_episodes, "frames": writer.n_frames,
                   "new_episodes": writer.n_episodes - first, "new_frames": new_frames, "seconds": seconds,
                   "frames_per_s": new_frames / seconds if seconds > 0 else 0.0}
    summary["env_backend"] = backend
    print(f"{out}: {summary['episodes']} episodes, {summary['frames']} frames, {backend} env "
          f"({summary['new_episodes']} new, {summary['frames_per_s']:.0f} frames/s)")
    return summary


def _run_controller(cfg: Config) -> dict[str, Any]:
    """``collect --controller RUN``: RUN's C drives, with its env and env kwargs (which --env must name)."""
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.envs import episode_seed

    run_dir = Path(cfg.controller)
    for part in ("vae", "mdrnn", "controller"):
        if not (run_dir / part / "checkpoint.pt").is_file():
            raise WorldModelsError(f"--controller {run_dir} has no {part}/checkpoint.pt (a run folder with V, M and C)")
    env = load_checkpoint(run_dir / "controller", kind="controller")["identity"].get("env")
    if env != cfg.env:
        raise WorldModelsError(f"--controller {run_dir} plays {env}, not --env {cfg.env}")
    if cfg.env_kwargs:
        raise WorldModelsError("--env-kwargs cannot be set with --controller: its C plays the env of its own data")
    if cfg.policy != "auto":
        raise WorldModelsError(f"--policy {cfg.policy} and --controller both choose the actions; pass one")
    out = Path(cfg.out) if cfg.out else default_out(cfg.env)
    seeds = [episode_seed(cfg.seed, i, "collect") for i in range(cfg.episodes)]
    start = time.perf_counter()
    summary = controller_episodes(run_dir, out, seeds, cfg.noise, cfg.max_steps, cfg.env_backend, cfg.env_batch,
                                  cfg.workers, {"seed": cfg.seed}, fresh=cfg.fresh, desc=f"collect {cfg.env}",
                                  backend=cfg.backend, ray_address=cfg.ray_address or None,
                                  param_noise=cfg.param_noise)
    summary["seconds"] = time.perf_counter() - start
    print(f"{out}: {summary['episodes']} episodes, {summary['frames']} frames, {summary['env_backend']} env "
          f"({summary['new_episodes']} new, driven by controller {summary['controller_id'][:8]} with noise {cfg.noise}"
          + (f", parameter noise {cfg.param_noise}" if cfg.param_noise else "") + ")")
    return summary
