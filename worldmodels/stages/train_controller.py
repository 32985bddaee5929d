"""Evolve the linear controller C with CMA-ES, in M's dream or in the real env; or fit it offline.

--where dream: each generation the whole population x rollouts (64 x 16 = 1024 members in the paper)
is one batched DreamEnv run at --temperature, on --device. Doom's dream reward is survival (+1 per
step, cut at 2100); other envs use M's predicted reward. --augment turns on generative augmentations
(worldmodels.augment) in every fitness dream; the periodic mean-solution score stays in the plain dream.
--dream-dropout and --dream-models make the fitness dreams dream ensembles, likewise: each member's episode
draws its own M (a dropout mask over M's head input, one of several Ms); the score stays with the run's M.
--dream-penalty makes the fitness dreams pessimistic: each step pays M's reward less that many times its spread
over dropout masks (where M cannot tell what a step pays, C gains nothing); the score stays plain.
--dream-return-cap ends every dream (fitness and score) when its return reaches the cap, as the game ends at its
best (a finished lap): beyond it the dream pays nothing, so C gains only on the dreams it loses.
--where real: workers (--backend local processes or ray) play the real env (--env-backend: envpool's
fast CarRacing where installed), each with V and M on CPU and env_batch episodes at once (worldmodels.play)
(the paper's CarRacing setup). Fitness is the mean return over the rollouts; CMA-ES (the cma library,
x0 = 0, or with --init the mean of another controller: a warm start) minimises its negative, with no
weight-decay term. --where offline: no search and no new
interaction, C is the return-weighted regression of the collected actions on [mu, h] (worldmodels.offline;
docs/controller.md, "C's input", says where that differs from what the agent feeds C).

Writes <run>/controller/: checkpoint.pt (CMA-ES state, best and mean parameters, generation, RNG
state; rewritten atomically every generation), config.yaml, metrics.jsonl and learning_curve.png.
Rerunning the same command resumes exactly where it stopped; --fresh starts over.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

from worldmodels import config as cfgmod
from worldmodels.checkpoint import load_checkpoint, new_id, save_checkpoint
from worldmodels.config import option
from worldmodels.errors import WorldModelsError
from worldmodels.metrics import MetricsLogger, read_metrics
from worldmodels.utils import exclusive_lock, pick_device


@dataclasses.dataclass
class Config:
    run: str = option("runs/default", "run folder holding vae/ and mdrnn/; C is written to <run>/controller/")
    where: Literal["dream", "real", "offline"] = option(
        "dream", "evolve in M's dream (batched) or in the real env (workers), or fit offline on the collected episodes")
    temperature: float = option(1.15, "dream temperature tau (mixture logits / tau, sigma * sqrt(tau))")
    popsize: int = option(64, "CMA-ES population size")
    rollouts: int = option(16, "rollouts per candidate; fitness is their mean return")
    sigma0: float = option(0.1, "CMA-ES initial step size")
    generations: int = option(300, "total generations (rerun with more to continue a finished run)")
    workers: int = option(-1, "real-env worker processes (-1: one per CPU core, 0: inline)")
    max_steps: Optional[int] = option(None, "episode step limit (default: 2100 Doom, 1000 otherwise)")
    eval_every: int = option(10, "score the mean solution every K generations (0: never)")
    eval_episodes: int = option(64, "episodes for each mean-solution score")
    eval_real: bool = option(False, "dream runs: also score the mean solution in the real env")
    seed: int = option(0, "seed of CMA-ES, dream noise and env seeds")
    obs_mode: Literal["zh", "zch", "z"] = option("zh", "controller input: [z, h], [z, c, h] or z only")
    latents: Optional[str] = option(None, "latents.h5 for the dream's initial z (default: the one M was trained on)")
    device: str = option("auto", "dream device: auto, cpu, cuda")
    augment: list[str] = option(factory=list, help="dream augmentations, in order: random_swing, deepdream, "
                                                   "value_diversification (comma-separated; default none)")
    augment_options: dict = option(factory=dict, help="per-augmentation options, e.g. "
                                                      "{random_swing: {probability: 0.5, strength: 0.3}}")
    dream_starts: Literal["first", "any"] = option(
        "first", "where a dream episode starts: a real first frame with h = 0 (the paper's), or any real frame "
                 "with M's state from the real frames before it (sparse rewards: dreams begin near them)")
    dream_reward: Literal["auto", "predicted", "nearest", "calibrated", "survival"] = option(
        "auto", "what a dream step pays: M's predicted reward, that snapped to the nearest reward seen in the data "
                "(sparse rewards: M's small bias cannot add up), snapped to the reward whose real frames M's head "
                "predicts nearest (calibrated: a rare reward M learned too small still pays), or 1 (survival); "
                "auto: survival for Doom, predicted otherwise")
    dream_dropout: float = option(0.0, "fitness dreams: each member's episode reads M's head through its own "
                                       "dropout mask of this rate (a dream ensemble; 0: the plain M)")
    dream_models: list[str] = option(factory=list, help="fitness dreams: more M checkpoint folders (M's sizes, "
                                                        "env and V); each member's episode steps one of the Ms")
    dream_penalty: float = option(0.0, "fitness dreams: each step's reward less this many times the standard "
                                       "deviation of M's predicted reward over 8 dropout masks (0.1) of h: a "
                                       "pessimistic dream (0: the plain reward)")
    dream_return_cap: Optional[float] = option(
        None, "a dream episode ends when its return reaches this, paying no more (the game's best return, e.g. "
              "CarRacing's finished lap, which M's done head may never have seen end a game); applies to the fitness "
              "and score dreams alike (default: no cap)")
    dream_common: bool = option(False, "fitness dreams: every candidate of a generation dreams the same --rollouts "
                                       "episodes (the same starts, M's samples and dropout masks: common random "
                                       "numbers, as real fitness plays every candidate on the same tracks), so "
                                       "candidates are ranked on their driving rather than on their dreams' luck "
                                       "(default: every member its own dream)")
    action_noise: float = option(0.0, "dream runs: C's actions get exploration noise in every dream, fitness and "
                                      "scores (--eval-real too), as collect and evaluate --noise play it: the std of "
                                      "Gaussian noise on continuous actions (clipped to the action space), the "
                                      "probability of a random action on discrete ones; C is evolved as the "
                                      "stochastic policy it collects with and is played as (0: none)")
    offline_weighting: Literal["softmax", "minmax", "uniform"] = option(
        "softmax", "--where offline: episode weights from returns (uniform = behaviour cloning)")
    offline_beta: float = option(1.0, "--where offline: softmax sharpness on standardised returns")
    offline_ridge: float = option(1e-3, "--where offline: ridge penalty, relative to the total weight")
    env_backend: Literal["auto", "reference", "fast"] = option(
        "auto", "real env for --where real and --eval-real: fast (envpool, CarRacing), reference "
                "(gymnasium/vizdoom/procgen), or auto (fast where available)")
    env_batch: int = option(8, "real episodes each worker plays at once (batched V/M/C); sets the grouping, "
                                "so --workers changes no result")
    stall_steps: Optional[int] = option(
        None, "--where real: end a fitness rollout after this many steps without a positive reward and credit "
              "its remaining steps at that stretch's reward rate (CarRacing: exactly -0.1 a step); scores always "
              "play full episodes")
    backend: Literal["local", "ray"] = option("local", "real-env workers: local processes or a ray cluster")
    ray_address: Optional[str] = option(None, "ray cluster to join: auto or HOST:PORT (default: a local ray instance)")
    tensorboard: Optional[bool] = option(None, "also log to <run>/controller/tensorboard (default: when installed)")
    init: Optional[str] = option(None, "warm start: CMA-ES starts from this controller's mean parameters (its folder "
                                       "or checkpoint.pt; same shape) instead of x0 = 0")
    fresh: bool = option(False, "start over, replacing an existing controller checkpoint")


# Settings that change the search trajectory: a resume must use the values the run started with.
TRAJECTORY_KEYS = ("where", "temperature", "popsize", "rollouts", "sigma0", "seed", "obs_mode", "max_steps", "init")
# ... and, where real episodes give the fitness, the env they are played on and how they are batched.
REAL_TRAJECTORY_KEYS = ("env_backend", "env_batch", "stall_steps")
DEFAULT_MAX_STEPS = {"doom": 2100}


def n_workers(workers: int) -> int:
    return (os.cpu_count() or 1) if workers < 0 else workers


def population_seeds(seed: int, generation: int, count: int, offset: int = 0) -> list[int]:
    """Real-env seeds of one generation: every candidate plays the same ``count`` episodes."""
    from worldmodels.envs import episode_seed

    return [episode_seed(seed, offset + generation * count + r, "train") for r in range(count)]


def dream_seed(seed: int, generation: int, purpose: int) -> int:
    """Seed of one batched dream (purpose 0: fitness, 1: mean-solution score)."""
    return int(np.random.SeedSequence([seed, generation, purpose]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------ CMA-ES loop
Fitness = Callable[[np.ndarray, int], np.ndarray]       # (params (P, N), generation) -> returns (P, R)
Scorer = Callable[[np.ndarray, int], np.ndarray]        # (params (N,), generation) -> returns (E,)
Extras = Callable[[], dict[str, float]]                 # metrics of the generation just played


def evolve(cfg: Config, out_dir: Path, n_params: int, fitness: Fitness, scorers: dict[str, Scorer],
           identity: dict[str, Any], plot: bool = True, extras: Extras | None = None) -> dict[str, Any]:
    """The CMA-ES ask/evaluate/tell loop with checkpoints, per-generation metrics and resume.

    The checkpoint is written after a generation unless the last write took more than a tenth of the time
    since (CHECKPOINT_OVERHEAD), and always after the last one: CMA-ES's full covariance makes it N^2 doubles
    twice (390 MB for ProcGen's 4,335 parameters, ~4 s to write, against ~2 s for a dream generation), while
    CarRacing's 6 MB is written every generation. A resume replays the generations after the checkpoint to the
    same result (the run is deterministic and the metrics past it are dropped).

    ``identity`` (env, controller shape, V/M ids) is stored in the checkpoint and must match on resume.
    ``scorers`` map a metric prefix (``eval``, ``eval_real``) to a mean-solution scorer; ``extras`` adds
    metrics after each generation (e.g. the real env steps it took).
    Returns the final summary (generation, best fitness, last scores, checkpoint path).
    """
    import cma

    ckpt_path = out_dir / "checkpoint.pt"
    state = _resume_state(cfg, ckpt_path, identity)
    if state is None:
        # cma treats seed 0 as "seed from the clock"; shift by one so every seed is reproducible.
        x0 = initial_mean(cfg.init, n_params) if cfg.init else np.zeros(n_params)
        es = cma.CMAEvolutionStrategy(x0, cfg.sigma0, {"popsize": cfg.popsize, "seed": cfg.seed + 1, "verbose": -9})
        state = {"id": new_id(), "generation": 0, "best": {"fitness": -np.inf, "params": np.zeros(n_params)},
                 "best_eval": {"score": -np.inf, "params": np.zeros(n_params), "generation": -1}}
    else:
        if "es" not in state:  # a slimmed C (results/ship.py, a finished study cell): final, but kept as it is
            if state["generation"] >= cfg.generations:
                return {"generation": state["generation"], "best_fitness": state["best"]["fitness"],
                        "best_eval": state["best_eval"]["score"], "checkpoint": str(ckpt_path), "sigma": None}
            raise WorldModelsError(f"{ckpt_path} holds a finished C without its CMA-ES state (slimmed, e.g. by "
                                   "results/ship.py or a finished study cell), so it cannot go on to "
                                   f"{cfg.generations} generations; pass --fresh to start a new search, or --init "
                                   "it to start from this C")
        es = pickle.loads(state["es"])
        np.random.set_state(state["np_rng"])  # cma draws its samples from numpy's global generator
    cfgmod.save(cfg, out_dir / "config.yaml")
    start = state["generation"]
    log = MetricsLogger(out_dir / "metrics.jsonl", step_key="generation", resume_from=start, tensorboard=cfg.tensorboard)
    bar = tqdm(range(start, cfg.generations), initial=start, total=cfg.generations, desc="cma-es", unit="gen")
    last_save, save_seconds = time.perf_counter(), 0.0
    try:
        for gen in bar:
            t0 = time.perf_counter()
            solutions = np.asarray(es.ask())                              # (P, N)
            returns = np.asarray(fitness(solutions, gen), dtype=np.float64)  # (P, R)
            fit = returns.mean(axis=1)                                    # (P,)
            if not np.all(np.isfinite(fit)):
                raise WorldModelsError(f"generation {gen}: non-finite fitness (the dream or env returned NaN)")
            es.tell(list(solutions), list(-fit))
            if fit.max() > state["best"]["fitness"]:
                state["best"] = {"fitness": float(fit.max()), "params": solutions[fit.argmax()].copy()}
            seconds = time.perf_counter() - t0
            record = {"cmaes/best": float(fit.max()), "cmaes/mean": float(fit.mean()), "cmaes/worst": float(fit.min()),
                      "cmaes/sigma": float(es.sigma), "cmaes/best_ever": state["best"]["fitness"],
                      "cmaes/seconds": seconds, **(extras() if extras else {})}
            if cfg.eval_every and ((gen + 1) % cfg.eval_every == 0 or gen + 1 == cfg.generations):
                for prefix, scorer in scorers.items():
                    scores = np.asarray(scorer(np.asarray(es.mean), gen), dtype=np.float64)
                    record[f"{prefix}/mean"], record[f"{prefix}/std"] = float(scores.mean()), float(scores.std())
                if "eval/mean" in record and record["eval/mean"] > state["best_eval"]["score"]:
                    state["best_eval"] = {"score": record["eval/mean"], "params": np.asarray(es.mean).copy(),
                                          "generation": gen}
            log.log(gen, **record)
            state.update(generation=gen + 1, es=pickle.dumps(es), np_rng=np.random.get_state())
            # Go on with the pickled copy, as a resumed run does: an unpickled cma object draws from its own
            # copy of numpy's generator in places where the live one shares the global one, so a run that
            # kept the live object drifted from a resumed one after the first generation (caught by
            # test_interrupted_pipeline_resumes_to_the_uninterrupted_result).
            es = pickle.loads(state["es"])
            if gen + 1 == cfg.generations or time.perf_counter() - last_save >= save_seconds / CHECKPOINT_OVERHEAD:
                t_save = time.perf_counter()
                _save(ckpt_path, cfg, state, es, identity)
                last_save = time.perf_counter()
                save_seconds = last_save - t_save
            bar.write(f"gen {gen + 1}/{cfg.generations}  best {fit.max():9.2f}  mean {fit.mean():9.2f}  "
                      f"worst {fit.min():9.2f}  sigma {es.sigma:.4f}  {seconds:.1f}s"
                      + "".join(f"  {k} {v:.2f}" for k, v in record.items() if k.endswith("/mean")
                                and not k.startswith("cmaes")))
            if plot and "eval/mean" in record:
                _plot(out_dir)
                log.image("cmaes/learning_curve", out_dir / "learning_curve.png", gen + 1)
    finally:
        bar.close()
        log.close()
    if plot:
        _plot(out_dir)
    return {"generation": state["generation"], "best_fitness": state["best"]["fitness"],
            "best_eval": state["best_eval"]["score"], "checkpoint": str(ckpt_path),
            "sigma": float(es.sigma)}


def initial_mean(path: str, n_params: int) -> np.ndarray:
    """The mean parameters of the controller at ``path``: x0 of a warm-started search (same shape only)."""
    mean = np.asarray(load_checkpoint(path, kind="controller").get("mean", []), dtype=np.float64)
    if mean.shape != (n_params,):
        raise WorldModelsError(f"--init {path}: its controller has {mean.size} parameters, this one {n_params}; "
                               "a warm start needs the same shape (the same V and M sizes and obs_mode)")
    return mean


def _save(path: Path, cfg: Config, state: dict[str, Any], es: Any, identity: dict[str, Any]) -> None:
    save_checkpoint(path, "controller", {
        "id": state["id"], "config": cfgmod.to_dict(cfg), "generation": state["generation"],
        "es": state["es"], "np_rng": state["np_rng"], "best": state["best"], "best_eval": state["best_eval"],
        "mean": np.asarray(es.mean).copy(), "identity": identity})


CHECKPOINT_OVERHEAD = 0.1  # at most this share of a search's time goes to writing its checkpoint


# Identity entries that checkpoints from before them lack, with the value those runs had.
IDENTITY_DEFAULTS: dict[str, Any] = {"augment": [], "dream_dropout": 0.0, "dream_models": [], "dream_starts": "first",
                                     "dream_reward": "auto", "dream_penalty": 0.0,
                                     "dream_return_cap": None, "action_noise": 0.0, "dream_common": False}


def _resume_state(cfg: Config, path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    if cfg.fresh or not path.exists():
        return None
    state = load_checkpoint(path, kind="controller")
    for key in TRAJECTORY_KEYS + (REAL_TRAJECTORY_KEYS if cfg.where == "real" else ()):
        if state["config"].get(key) != getattr(cfg, key):
            raise WorldModelsError(
                f"{path} was started with {key}={state['config'].get(key)!r}, not {getattr(cfg, key)!r}; "
                "rerun with the same settings to resume, or pass --fresh to start over")
    for key, value in identity.items():
        if state["identity"].get(key, IDENTITY_DEFAULTS.get(key)) != value:
            raise WorldModelsError(f"{path} was trained with a different {key} ({state['identity'].get(key)!r} "
                                   f"vs {value!r}); pass --fresh to start over against the current V and M")
    return state


def _plot(out_dir: Path) -> None:
    from worldmodels.plots import learning_curve

    learning_curve(read_metrics(out_dir / "metrics.jsonl"), out_dir / "learning_curve.png")


# ------------------------------------------------------------------------------------------------ the stage
# Settings an offline fit depends on: a rerun with the same ones keeps the fitted controller (same id).
OFFLINE_KEYS = ("where", "obs_mode", "latents", "offline_weighting", "offline_beta", "offline_ridge")


def make_augmentations(cfg: Config, world: Any) -> list[Any]:
    """``cfg.augment`` with ``cfg.augment_options``; random swing with ``source: real`` gets every
    collected frame's mu as its bank, on the dream's device."""
    from worldmodels.augment import build_augmentations

    swing = (cfg.augment_options.get("random_swing") or {}) if isinstance(cfg.augment_options, dict) else {}
    bank = None
    if "random_swing" in cfg.augment and isinstance(swing, dict) and swing.get("source") == "real":
        bank = world.real_latents(cfg.latents).to(world.device)
    return build_augmentations(cfg.augment, cfg.augment_options, latents=bank)


def load_dream_models(paths: list[str], world: Any) -> list[Any]:
    """The extra Ms of a dream ensemble on the dream's device; each must have M's sizes and come from the
    run's env and (where its latents file is here to tell) the run's V, else a one-line error naming it."""
    from worldmodels.data import open_latents
    from worldmodels.models.mdrnn import load_mdrnn

    sizes = ("z_dim", "action_dim", "hidden", "n_gaussians")
    models = []
    for path in paths:
        m = load_mdrnn(path, world.device)
        recorded = load_checkpoint(path, kind="mdrnn").get("config") or {}
        if any(getattr(m, k) != getattr(world.mdrnn, k) for k in sizes):
            raise WorldModelsError(f"--dream-models {path}: its sizes {[getattr(m, k) for k in sizes]} differ from the "
                                   f"run's M {[getattr(world.mdrnn, k) for k in sizes]} ({', '.join(sizes)})")
        if recorded.get("env", world.env) != world.env:
            raise WorldModelsError(f"--dream-models {path}: its M models {recorded['env']}, not {world.env}")
        latents = str(recorded.get("latents") or "").split(",")[0]
        if latents and Path(latents).is_file() and world.vae_id:
            with open_latents(latents) as f:
                vae_id = f.attrs.get("vae_id")
            if vae_id and vae_id != world.vae_id:
                raise WorldModelsError(f"--dream-models {path}: its M learned another V's latents ({latents})")
        models.append(m)
    return models


def fit_offline(cfg: Config, world: Any, out_dir: Path) -> dict[str, Any]:
    """--where offline: fit C on the collected episodes; an existing fit with the same settings is kept."""
    from worldmodels.offline import fit_offline_controller, save_offline_controller

    path = out_dir / "checkpoint.pt"
    identity = {"env": world.env, "vae_id": world.vae_id, "mdrnn_id": world.mdrnn_id, **world.controller_spec()}
    if path.exists() and not cfg.fresh:
        state = load_checkpoint(path, kind="controller")
        for key in OFFLINE_KEYS:
            if state["config"].get(key) != getattr(cfg, key):
                raise WorldModelsError(f"{path} was made with {key}={state['config'].get(key)!r}, not "
                                       f"{getattr(cfg, key)!r}; pass --fresh to replace it")
        if any(state["identity"].get(k) != v for k, v in identity.items()):
            raise WorldModelsError(f"{path} was fitted against another V or M; pass --fresh to refit")
        print(f"controller: offline fit already in {path} (kept; --fresh refits)")
        return {"generation": 0, "checkpoint": str(path), "offline": state["offline"], "kept": True}
    fit = fit_offline_controller(world, latents=cfg.latents, weighting=cfg.offline_weighting,
                                 beta=cfg.offline_beta, ridge=cfg.offline_ridge)
    save_offline_controller(out_dir, fit, world, cfgmod.to_dict(cfg))
    cfgmod.save(cfg, out_dir / "config.yaml")
    print(f"controller: offline fit on {fit.info['episodes']} episodes ({fit.info['frames']} frames, "
          f"{cfg.offline_weighting} weights) -> {path}")
    return {"generation": 0, "checkpoint": str(path), "offline": fit.info, "kept": False}


def run(cfg: Config) -> dict[str, Any]:
    """Train C for ``cfg.run``; returns :func:`evolve`'s summary (or :func:`fit_offline`'s)."""
    from worldmodels.agent import load_world
    from worldmodels.augment import describe
    from worldmodels.envs import resolve_backend
    from worldmodels.parallel import WorkerPool
    from worldmodels.play import check_noise, init_worker, play_members

    for name in ("popsize", "rollouts", "generations", "eval_episodes", "env_batch"):
        if getattr(cfg, name) < 1:
            raise WorldModelsError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.sigma0 <= 0 or cfg.temperature <= 0:
        raise WorldModelsError("sigma0 and temperature must be positive")
    if cfg.augment and cfg.where != "dream":
        raise WorldModelsError(f"--augment changes dreamed latents; it needs --where dream, not {cfg.where}")
    if (cfg.dream_dropout or cfg.dream_models or cfg.dream_penalty or cfg.dream_return_cap is not None
            or cfg.dream_common) and cfg.where != "dream":
        raise WorldModelsError(f"--dream-dropout, --dream-models, --dream-penalty, --dream-return-cap and "
                               f"--dream-common change the dream; they need --where dream, not {cfg.where}")
    if cfg.action_noise and cfg.where != "dream":
        raise WorldModelsError(f"--action-noise plays C's dreams with exploration noise; it needs --where dream, "
                               f"not {cfg.where}")
    if cfg.dream_return_cap is not None and not (math.isfinite(cfg.dream_return_cap) and cfg.dream_return_cap > 0):
        raise WorldModelsError(f"dream_return_cap must be a positive number (or none), got {cfg.dream_return_cap}")
    if not cfg.dream_penalty >= 0:
        raise WorldModelsError(f"dream_penalty must be >= 0, got {cfg.dream_penalty}")
    if not 0 <= cfg.dream_dropout < 1:
        raise WorldModelsError(f"dream_dropout must be in [0, 1), got {cfg.dream_dropout}")
    if cfg.init and cfg.where == "offline":
        raise WorldModelsError("--init warm-starts CMA-ES; --where offline has no search to start")
    if cfg.stall_steps is not None and (cfg.where != "real" or cfg.stall_steps < 1):
        raise WorldModelsError(f"--stall-steps must be >= 1 and needs --where real, got {cfg.stall_steps} "
                               f"with --where {cfg.where}")
    if cfg.ray_address and cfg.backend != "ray":
        raise WorldModelsError("--ray-address needs --backend ray")
    if cfg.backend == "ray" and cfg.where != "real" and not cfg.eval_real:
        raise WorldModelsError(f"--backend ray runs real-env workers, and --where {cfg.where} without --eval-real "
                               "has none; drop --backend ray (the dream runs batched in this process)")
    device = pick_device(cfg.device) if cfg.where != "real" else torch.device("cpu")
    world = load_world(Path(cfg.run), cfg.obs_mode, device, latents=cfg.latents)
    check_noise(cfg.action_noise, world.env, world.action_map.discrete, "--action-noise")
    out_dir = Path(cfg.run) / "controller"
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.where == "offline":
        with exclusive_lock(out_dir / "checkpoint.pt", "train-controller"):
            return fit_offline(cfg, world, out_dir)
    augs = make_augmentations(cfg, world)
    extra = load_dream_models(cfg.dream_models, world)
    max_steps = cfg.max_steps or DEFAULT_MAX_STEPS.get(world.family, 1000)
    identity = {"env": world.env, "vae_id": world.vae_id, "mdrnn_id": world.mdrnn_id, **world.controller_spec(),
                "augment": describe(augs), "dream_dropout": cfg.dream_dropout,
                "dream_models": [m.checkpoint_id for m in extra]}
    if cfg.where == "dream":  # older checkpoints, without these, had the defaults (IDENTITY_DEFAULTS)
        identity.update(dream_starts=cfg.dream_starts, dream_reward=cfg.dream_reward, dream_penalty=cfg.dream_penalty,
                        dream_return_cap=cfg.dream_return_cap, action_noise=cfg.action_noise,
                        dream_common=cfg.dream_common)
    env_backend = resolve_backend(world.env, cfg.env_backend) if cfg.where == "real" or cfg.eval_real else None
    if cfg.where == "real":  # the env the fitness was measured on, as resolved on this machine
        identity["env_backend"] = env_backend

    pool = None
    if env_backend is not None:
        spec = world.worker_spec(max_steps, levels="train", env_backend=env_backend)
        pool = WorkerPool(n_workers(cfg.workers), init_worker, (spec,), what="real-env controller fitness",
                          backend=cfg.backend, ray_address=cfg.ray_address)

    steps = {"fitness": 0}  # real env steps of the last generation's fitness rollouts

    def real_returns(params: np.ndarray, seeds: list[int], stall_steps: int | None = None,
                     noise: float = 0.0) -> np.ndarray:
        """Returns (P, R): every candidate on every seed, members candidate-major, in batches of env_batch."""
        members = np.repeat(np.asarray(params), len(seeds), axis=0)
        returns, played = play_members(pool, members, list(seeds) * len(params), cfg.env_batch, stall_steps, noise)
        steps["fitness"] = played
        return returns.reshape(len(params), len(seeds))

    scorers: dict[str, Scorer] = {}
    if cfg.where == "dream":
        # Augmentations, dream ensembles and the penalty change the fitness dreams (training); the mean solution is scored
        # in the plain dream of the run's M.
        kind = {"starts": cfg.dream_starts, "reward": cfg.dream_reward, "return_cap": cfg.dream_return_cap}
        dreams = world.dream_factory(cfg.temperature, max_steps, cfg.seed, augmentations=augs,
                                     dropout=cfg.dream_dropout, models=extra, penalty=cfg.dream_penalty,
                                     streams=cfg.rollouts if cfg.dream_common else None, **kind)
        # The score's eval_episodes dreams are all distinct: common streams would repeat rollouts of them.
        varied = augs or cfg.dream_dropout or extra or cfg.dream_penalty or cfg.dream_common
        plain = world.dream_factory(cfg.temperature, max_steps, cfg.seed, **kind) if varied else dreams

        def fitness(params: np.ndarray, gen: int) -> np.ndarray:
            return world.dream_returns(dreams(len(params) * cfg.rollouts), params, cfg.rollouts,
                                       dream_seed(cfg.seed, gen, 0), cfg.action_noise)

        scorers["eval"] = lambda mean, gen: world.dream_returns(
            plain(cfg.eval_episodes), mean[None], cfg.eval_episodes, dream_seed(cfg.seed, gen, 1), cfg.action_noise)[0]
    else:
        def fitness(params: np.ndarray, gen: int) -> np.ndarray:
            return real_returns(params, population_seeds(cfg.seed, gen, cfg.rollouts), cfg.stall_steps)

    if cfg.where == "real" or cfg.eval_real:
        # Fresh train-purpose seeds, far past those the candidates played (10**7 > generations * rollouts).
        scorers["eval_real" if cfg.where == "dream" else "eval"] = lambda mean, gen: real_returns(
            mean[None], population_seeds(cfg.seed, gen, cfg.eval_episodes, offset=10**7), noise=cfg.action_noise)[0]

    with exclusive_lock(out_dir / "checkpoint.pt", "train-controller"):
        try:
            summary = evolve(cfg, out_dir, world.n_params, fitness, scorers, identity,
                             extras=(lambda: {"cmaes/env_steps": steps["fitness"]}) if cfg.where == "real" else None)
        except BaseException:
            if pool is not None:
                pool.close(cancel=True)
            raise
        if pool is not None:
            pool.close()
    print(f"controller: {summary['generation']} generations, best fitness {summary['best_fitness']:.2f}, "
          f"checkpoint {summary['checkpoint']}")
    return summary
