"""Score the evolved controller C, with V and M, in the real env (or in M's dream) over many episodes.

Episode i is played with env seed episode_seed(seed, i, "eval"): a range disjoint from the seeds of
collection and training, so no evaluation episode was seen before. ProcGen --levels test plays levels
never used in collection (a disjoint start_level range); --levels train replays the collection's levels.
Other envs have no levels: both choices play fresh eval seeds. Per-episode results depend on the seed and
on how the episodes are grouped into batches of env_batch, not on the number of workers or on the backend
(--backend local processes, or ray): V, M and C run one forward per step for a batch, and the float rounding of
a batched forward depends on the batch's size, which CarRacing's 1000 steps amplify into another return. So the
same --episodes and --env-batch on the same machine reproduce a returns.csv exactly; a run of its first few
episodes alone (a smaller last batch) need not.

--where dream scores the same controller in M's dream instead (at C's training temperature unless
--temperature is given), in one batched dream whose seed no training dream used: the "dream score"
beside the real one in the paper's Doom table. It writes <run>/eval-dream-<tau>/ with the same files.

Episodes are played env_batch at a time by each worker (one V/M/C forward per step for the batch),
on --env-backend reference by default: every number reported beside the paper's is measured there.
A fast-backend evaluation writes <run>/eval-<levels>-fast/ instead, so the two never mix.

--noise plays C with exploration noise on its actions, as collect does (continuous: Gaussian noise of that std,
the sum clipped to the action space; discrete: a uniformly random action with that probability), drawn from
each episode's own stream: a stochastic policy around C, still never trained on a real return. It writes
<run>/eval-<levels>[-fast]-noise<std>/, apart from C's own scores.

Writes <run>/eval-<levels>/: returns.csv (episode, seed, level, return, length, env_backend), summary.json
(mean, std, min, max, ... and what was evaluated) and episode.gif (episode 0, frames upscaled; with --no-gif a
new evaluation removes the folder's earlier one, which showed another C or other tracks).
Finished episodes go to returns.partial.jsonl as they come: rerunning a killed evaluation with the
same settings plays only the missing episodes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from tqdm import tqdm

from worldmodels.config import option
from worldmodels.errors import WorldModelsError
from worldmodels.utils import atomic_write_text

# top_action: the fraction of the episode's steps on its most common action (discrete actions; empty otherwise).
CSV_COLUMNS = ("episode", "seed", "level", "return", "length", "env_backend", "top_action")
GIF_MAX_FRAMES = 400


@dataclasses.dataclass
class Config:
    run: str = option("runs/default", "run folder with vae/, mdrnn/ and controller/")
    where: Literal["real", "dream"] = option("real", "play the real env, or M's dream (one batched dream)")
    temperature: Optional[float] = option(None, "--where dream: dream temperature (default: C's training one)")
    device: str = option("auto", "--where dream: the dream's device: auto (cuda if available), cpu, cuda, cuda:1, ... "
                                 "(real episodes run V, M and C on CPU in their workers)")
    episodes: int = option(100, "real-env episodes to play")
    workers: int = option(-1, "worker processes (-1: one per CPU core, 0: inline)")
    levels: Literal["train", "test"] = option("test", "ProcGen levels: test = never seen in collection")
    max_steps: Optional[int] = option(None, "episode step limit (default: the env's own)")
    seed: int = option(0, "evaluation seed: episode i plays env seed episode_seed(seed, i, 'eval')")
    noise: float = option(0.0, "play C with exploration noise on its actions, as collect --noise does: continuous, "
                               "the std of Gaussian noise added (clipped to the action space); discrete, the "
                               "probability of a random action (0: C as evolved; written to eval-<levels>-noise<std>/)")
    params: Literal["auto", "best", "mean"] = option(
        "auto", "which controller: best = best candidate of any generation, mean = CMA-ES mean now, "
                "auto = the mean solution with the best periodic score (best if none was scored)")
    gif: bool = option(True, "record episode 0 as episode.gif")
    latents: Optional[str] = option(None, "--where dream: latents file of the dream's first frames (default: the one "
                                          "C was trained with, else M's), e.g. a shipped model's starts.h5")
    env_backend: Literal["reference", "fast", "auto"] = option(
        "reference", "real env: reference (gymnasium/vizdoom/procgen, what results are reported on), fast "
                     "(envpool, CarRacing), or auto (fast where available)")
    env_batch: int = option(8, "episodes each worker plays at once (batched V/M/C); sets the grouping, "
                                "so --workers changes no result")
    backend: Literal["local", "ray"] = option("local", "episode workers: local processes or a ray cluster")
    ray_address: Optional[str] = option(None, "ray cluster to join: auto or HOST:PORT (default: a local ray instance)")


def controller_params(state: dict[str, Any], which: str) -> tuple[np.ndarray, str]:
    """The parameter vector a controller checkpoint offers under ``which``, and a label for it."""
    if which == "mean":
        return np.asarray(state["mean"]), f"CMA-ES mean after generation {state['generation']}"
    best_eval = state.get("best_eval") or {}
    if which == "auto" and best_eval.get("generation", -1) >= 0:
        return np.asarray(best_eval["params"]), (f"mean solution of generation {best_eval['generation'] + 1} "
                                                 f"(periodic score {best_eval['score']:.2f})")
    return np.asarray(state["best"]["params"]), f"best candidate (fitness {state['best']['fitness']:.2f})"


def progress_rows(path: Path, key: dict[str, Any]) -> list[Any]:
    """The rows of a progress file (JSON lines after a ``{"key": key}`` header) whose header is ``key``;
    none for a missing file or another key. A torn last line from a killed run is skipped."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    try:
        if json.loads(lines[0]) != {"key": key}:
            return []
    except (IndexError, json.JSONDecodeError):
        return []
    rows = []
    for line in lines[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _read_progress(path: Path, key: dict[str, Any]) -> dict[int, tuple]:
    """Episodes an interrupted evaluation of the same controller and settings already finished."""
    # rows of an older version (other columns) are played again
    return {int(row[0]): tuple(row) for row in progress_rows(path, key) if len(row) == len(CSV_COLUMNS)}


def _write_gif(frames: np.ndarray, path: Path) -> None:
    from worldmodels.plots import episode_gif

    stride = max(1, -(-len(frames) // GIF_MAX_FRAMES))  # long episodes: every stride-th frame
    episode_gif(frames[::stride], path, fps=max(1, 30 // stride))


def run(cfg: Config) -> dict[str, Any]:
    """Evaluate ``cfg.run``'s controller; returns the summary written to summary.json."""
    from worldmodels.agent import load_world
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.envs import episode_seed, resolve_backend
    from worldmodels.parallel import WorkerPool
    from worldmodels.play import batch_tasks, check_noise, init_worker, worker_batch
    from worldmodels.stages.train_controller import n_workers
    from worldmodels.utils import pick_device

    if cfg.episodes < 1 or cfg.env_batch < 1:
        raise WorldModelsError(f"episodes and env_batch must be at least 1, got {cfg.episodes}, {cfg.env_batch}")
    run_dir = Path(cfg.run)
    state = load_checkpoint(run_dir / "controller", kind="controller")
    identity, train_cfg = state["identity"], state["config"]
    # Real episodes run V and M on CPU in the workers; a dream runs batched on --device.
    device = pick_device(cfg.device) if cfg.where == "dream" else "cpu"
    world = load_world(run_dir, identity["obs_mode"], device, latents=cfg.latents or train_cfg.get("latents"))
    for key, now in (("vae_id", world.vae_id), ("mdrnn_id", world.mdrnn_id), ("input_dim", world.input_dim)):
        if identity.get(key) != now:
            raise WorldModelsError(f"{run_dir}: the controller was evolved with a different {key.split('_')[0]} "
                                   f"than the one in the run now; retrain the controller (--fresh)")
    params, label = controller_params(state, cfg.params)
    check_noise(cfg.noise, world.env, world.action_map.discrete)
    if cfg.noise and cfg.where == "dream":
        raise WorldModelsError("--noise plays the real env; a dream score is C's own (drop --noise or --where dream)")
    if cfg.where == "dream":
        return _evaluate_in_dream(cfg, run_dir, world, state, params, label)
    backend = resolve_backend(world.env, cfg.env_backend)
    spec = world.worker_spec(cfg.max_steps, levels=cfg.levels, env_backend=backend)
    out_dir = run_dir / (f"eval-{cfg.levels}" + ("-fast" if backend == "fast" else "")
                         + (f"-noise{cfg.noise:g}" if cfg.noise else ""))
    seeds = [episode_seed(cfg.seed, i, "eval") for i in range(cfg.episodes)]
    # Finished episodes are appended to a progress file, so a killed evaluation resumes where it stopped.
    key = {"controller_id": state["id"], "generation": state["generation"], "params": cfg.params,
           "seed": cfg.seed, "levels": cfg.levels, "max_steps": cfg.max_steps, "env_backend": backend,
           "env_batch": cfg.env_batch, "noise": cfg.noise}
    progress = out_dir / "returns.partial.jsonl"
    done = _read_progress(progress, key)
    want_gif = cfg.gif and (0 not in done or not (out_dir / "episode.gif").exists())
    todo = [i for i in range(cfg.episodes) if i not in done or (i == 0 and want_gif)]
    # Batches are cut from the full episode list (never by worker count); a resumed batch plays its missing episodes.
    tasks, task_episodes = [], []
    for start in range(0, cfg.episodes, cfg.env_batch):
        members = [i for i in range(start, min(start + cfg.env_batch, cfg.episodes)) if i in todo]
        if members:
            tasks += batch_tasks(np.repeat(params[None], len(members), 0), [seeds[i] for i in members],
                                 len(members), [want_gif and i == 0 for i in members], noise=cfg.noise)
            task_episodes.append(members)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not done:
        progress.write_text(json.dumps({"key": key}) + "\n")
        if not want_gif:  # the folder's last evaluation's (another C, or other tracks): never beside these scores
            (out_dir / "episode.gif").unlink(missing_ok=True)
    with WorkerPool(n_workers(cfg.workers), init_worker, (spec,), what="evaluation", backend=cfg.backend,
                    ray_address=cfg.ray_address) as pool, \
            open(progress, "a") as log, \
            tqdm(total=cfg.episodes, initial=cfg.episodes - len(todo), desc="evaluate", unit="episode") as bar:
        for j, results in pool.imap(worker_batch, tasks):
            for i, result in zip(task_episodes[j], results):
                if result["frames"] is not None:
                    _write_gif(result["frames"], out_dir / "episode.gif")
                done[i] = (i, seeds[i], result["level"], result["return"], result["length"], backend,
                           result["top_action"])
                log.write(json.dumps(done[i]) + "\n")
            log.flush()
            bar.update(len(results))
            bar.set_postfix(mean=f"{np.mean([r[3] for r in done.values()]):.1f}")
    rows = [done[i] for i in range(cfg.episodes)]
    returns = np.array([r[3] for r in rows])
    summary = {"env": world.env, "env_backend": backend, "env_batch": cfg.env_batch, "levels": cfg.levels,
               "env_kwargs": spec["env_kwargs"], "episodes": len(rows),
               "mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
               "max": float(returns.max()), "median": float(np.median(returns)),
               "mean_length": float(np.mean([r[4] for r in rows])),
               "top_action": float(np.mean([r[6] for r in rows])) if rows[0][6] is not None else None,
               "seed": cfg.seed, "params": cfg.params, "noise": cfg.noise,
               "controller": label, "controller_id": state["id"], "generation": state["generation"],
               "vae_id": world.vae_id, "mdrnn_id": world.mdrnn_id, "obs_mode": identity["obs_mode"],
               "trained_where": train_cfg.get("where"), "temperature": train_cfg.get("temperature"),
               "trained_action_noise": train_cfg.get("action_noise") or 0.0}
    _write_results(out_dir, rows, summary)
    progress.unlink()
    print(f"evaluate: {world.env} ({backend} env, {cfg.levels} levels"
          + (f", action noise {cfg.noise:g}" if cfg.noise else "") + f"), {len(rows)} episodes: "
          f"{summary['mean']:.2f} ± {summary['std']:.2f}  -> {out_dir}")
    return summary


def _write_results(out_dir: Path, rows: list[tuple], summary: dict[str, Any]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(out_dir / "returns.csv", buf.getvalue())
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


# Purpose 2 of train_controller.dream_seed: fitness dreams use 0 and mean-solution scores 1.
DREAM_EVAL_PURPOSE = 2


def _evaluate_in_dream(cfg: Config, run_dir: Path, world: Any, state: dict[str, Any], params: np.ndarray,
                       label: str) -> dict[str, Any]:
    """All episodes as members of one batched dream (``world`` loaded on the dream's device); member i is
    the dream's episode i."""
    from worldmodels.models.controller import BatchedController, rollout_dream
    from worldmodels.stages.train_controller import DEFAULT_MAX_STEPS, dream_seed

    train_cfg = state["config"]
    tau = cfg.temperature
    if tau is None and train_cfg.get("where") == "dream":
        tau = float(train_cfg["temperature"])
    if tau is None:
        raise WorldModelsError(f"--where dream needs --temperature: C was trained {train_cfg.get('where')}, "
                               "not in a dream")
    if tau <= 0:
        raise WorldModelsError(f"temperature must be positive, got {tau}")
    max_steps = cfg.max_steps or train_cfg.get("max_steps") or DEFAULT_MAX_STEPS.get(world.family, 1000)
    # the dream C was trained in: its starts, reward and return cap (checkpoints from before these options: the
    # defaults)
    kind = {"starts": train_cfg.get("dream_starts") or "first", "reward": train_cfg.get("dream_reward") or "auto",
            "return_cap": train_cfg.get("dream_return_cap")}
    dream = world.dream_factory(tau, max_steps, cfg.seed, **kind)(cfg.episodes)
    ctrl = BatchedController(params[None], world.input_dim, world.action_map.output_dim, world.action_map.bias,
                             cfg.episodes, device=world.device)
    seed = dream_seed(cfg.seed, 0, DREAM_EVAL_PURPOSE)
    noise = float(train_cfg.get("action_noise") or 0.0)  # C evolved as a stochastic policy is scored as one
    returns = rollout_dream(dream, ctrl, world.action_map, seed, noise=noise)
    lengths = dream.lengths.cpu().numpy()
    rows = [(i, seed, -1, float(returns[i]), int(lengths[i]), "dream", None) for i in range(cfg.episodes)]
    out_dir = run_dir / f"eval-dream-{tau:g}"
    summary = {"env": world.env, "env_backend": "dream", "where": "dream", "temperature": tau, "max_steps": int(max_steps),
               "episodes": cfg.episodes, "mean": float(returns.mean()), "std": float(returns.std()),
               "min": float(returns.min()), "max": float(returns.max()), "median": float(np.median(returns)),
               "mean_length": float(lengths.mean()), "seed": cfg.seed, "dream_seed": seed, "params": cfg.params,
               "controller": label, "controller_id": state["id"], "generation": state["generation"],
               "vae_id": world.vae_id, "mdrnn_id": world.mdrnn_id, "obs_mode": state["identity"]["obs_mode"],
               "trained_where": train_cfg.get("where"), "trained_temperature": train_cfg.get("temperature"),
               "dream_starts": kind["starts"], "dream_reward": kind["reward"], "dream_return_cap": kind["return_cap"],
               "action_noise": noise}
    _write_results(out_dir, rows, summary)
    print(f"evaluate: {world.env} in the dream at tau {tau:g}, {cfg.episodes} episodes: "
          f"{summary['mean']:.2f} ± {summary['std']:.2f}  -> {out_dir}")
    return summary
