"""Train M, the MDN-RNN, on the latent sequences of a latents.h5 file (written by `worldmodels encode`).

Each step reads a batch of sequences straight from HDF5 (one contiguous slice per sequence, never
crossing an episode boundary; short tails padded and masked), re-samples z = mu + exp(logvar/2) * eps
from V's stored posteriors, and fits p(z_{t+1}), reward[t] and done[t] from (z_t, a_t). Whole episodes
are held out for validation.

--sequences episode (the default, and the paper's design): every sequence starts at an episode's first
frame with h = 0 and runs for up to --seq-len steps, exactly as the dream uses M (it starts each dream at
a real first frame with h = 0). In DoomTakeCover health is not on screen: M can only predict death by
counting hits since the episode began, which a window starting mid-episode cannot see. Set --seq-len to
cover the episodes (paper: 500 Doom, 999 CarRacing); frames past it are never trained on.
--sequences window: a window starting uniformly inside the episode (also with h = 0), the older sampling.

Validation reports the done head as the dream uses it (done at logit > 0): val/mdrnn/done_recall, the
fraction of real episode ends (terminated) where it fires, and val/mdrnn/done_false_alarm, the fraction
of other steps where it fires. Every --eval-every steps: `mdrnn/*` and `val/mdrnn/*` metrics and an
atomic checkpoint. At the end, dream_vs_real.png/.gif: a real episode beside M's open-loop dream
decoded by V. Rerunning the same command resumes; --fresh starts over.

--latents a.h5,b.h5 trains on several latents files as one dataset (the rounds of `worldmodels iterate`):
they must come from the same env and the same V, and each file's episodes are split into training and
validation on their own (so adding a file never moves another file's episodes across the split).
--init DIR starts from another M's weights (a warm start; sizes must match), with a fresh optimizer.
--recent-share S draws that share of each training batch from the last --recent-files files of --latents (the
latest rounds: M learns the driving of the policy that plays in its dream, which is otherwise a sliver of the data),
the rest from all the others; 0 draws every episode alike. --low-return-share S then gives that share of the draws
from the latest files (of every draw, without --recent-share) to their episodes whose return (their rewards' sum)
is under --low-return R: e.g. the laps the latest controller lost off the road, which M's dream must learn to reach
if C is to learn to avoid them. Older files keep their draws (in iterate, random driving whose returns are all low).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

from worldmodels import config as cfgmod
from worldmodels.checkpoint import CHECKPOINT_NAME, checkpoint_file, load_checkpoint, new_id, save_checkpoint
from worldmodels.data import LATENTS, EpisodeFiles, split_paths
from worldmodels.errors import WorldModelsError
from worldmodels.training import check_same_run, finite_or_stop
from worldmodels.metrics import MetricsLogger
from worldmodels.models.mdrnn import MDRNN, mdrnn_loss, sample_gmm, sample_latents
from worldmodels.stages.train_vae import split_files
from worldmodels.utils import exclusive_lock, pick_device, seed_everything


@dataclasses.dataclass
class Config:
    latents: str = cfgmod.option("", "latents.h5 written by `worldmodels encode` (required); several as a.h5,b.h5 "
                                     "(the same env and V): one dataset, each file split on its own")
    out: str = cfgmod.option("", "run folder for M, e.g. runs/<name>/mdrnn (required)")
    vae: Optional[str] = cfgmod.option(None, "V's run folder for the dream_vs_real picture (default: <out>/../vae)")
    hidden: int = cfgmod.option(256, "LSTM size (paper: 256 CarRacing, 512 Doom)")
    n_gaussians: int = cfgmod.option(5, "mixture components per latent dimension")
    dropout: float = cfgmod.option(0.0, "variational dropout on the LSTM output before the head, one mask per "
                                        "sequence (0: none); a dream can then draw one M per member (--dream-dropout)")
    seq_len: int = cfgmod.option(999, "time steps per training sequence (paper: 999 CarRacing, 500 Doom)")
    sequences: Literal["episode", "window"] = cfgmod.option(
        "episode", "where sequences start: at the episode's first frame (as the dream uses M), or a window "
                   "anywhere inside the episode")
    batch_size: int = cfgmod.option(100, "sequences per step")
    steps: int = cfgmod.option(4000, "total gradient steps (may grow on resume)")
    lr: float = cfgmod.option(1e-3, "Adam learning rate")
    grad_clip: float = cfgmod.option(1.0, "gradient norm clip")
    reward_weight: float = cfgmod.option(1.0, "weight of the reward MSE in the loss (0: no reward head training)")
    done_weight: float = cfgmod.option(1.0, "weight of the done BCE in the loss")
    done_pos_weight: float = cfgmod.option(10.0, "weight of done=1 targets inside the BCE (paper: 10)")
    val_fraction: float = cfgmod.option(0.05, "fraction of episodes held out for validation")
    val_batches: int = cfgmod.option(4, "validation batches per evaluation (the same sequences every time)")
    eval_every: int = cfgmod.option(100, "steps between metrics, validation and checkpoints")
    picture_steps: int = cfgmod.option(64, "frames in dream_vs_real.png/.gif (0: no picture)")
    picture_temperature: float = cfgmod.option(1.0, "temperature of the pictured dream")
    device: str = cfgmod.option("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    seed: int = cfgmod.option(0, "seed for weights, sequence sampling, z re-sampling and validation split")
    tensorboard: Optional[bool] = cfgmod.option(None, "also log to <out>/tensorboard (default: when installed)")
    recent_share: float = cfgmod.option(0.0, "share of each training batch drawn from the episodes of the last "
                                             "--recent-files latents files (0: every episode alike)")
    recent_files: int = cfgmod.option(1, "how many of the last --latents files --recent-share draws from")
    low_return_share: float = cfgmod.option(0.0, "share of the draws from the --recent-share files (of every draw "
                                                 "without it) given to their episodes returning under "
                                                 "--low-return (0: none)")
    low_return: Optional[float] = cfgmod.option(None, "an episode whose return (its rewards' sum) is under this is "
                                                      "a low-return one, for --low-return-share")
    init: Optional[str] = cfgmod.option(None, "start from this M's weights (its folder or checkpoint.pt; same sizes), "
                                              "not a random init")
    fresh: bool = cfgmod.option(False, "delete this run folder's checkpoint and metrics and start over")


# The attributes that make several latents files one dataset: the same env, actions and V.
SAME_DATA = ("env", "action_space", "z_dim", "vae_id")
# Keys that may differ when resuming: they change how long or where we train, not what is trained.
CONTINUATION_SAFE = ("steps", "device", "fresh", "eval_every", "vae", "picture_steps", "picture_temperature",
                     "val_batches", "tensorboard")
OUTPUTS = (CHECKPOINT_NAME, "metrics.jsonl", "dream_vs_real.png", "dream_vs_real.gif")


def action_dim_of(desc: dict[str, Any]) -> int:
    return int(desc["n"]) if desc["type"] == "discrete" else int(np.prod(desc["shape"]))


def actions_to_input(actions: np.ndarray, desc: dict[str, Any]) -> np.ndarray:
    """Stored actions -> M's input: one-hot float32 (T, n) for discrete, float32 (T, A) for boxes."""
    if desc["type"] == "discrete":
        return np.eye(int(desc["n"]), dtype=np.float32)[actions]
    return actions.astype(np.float32).reshape(len(actions), -1)


def _split(p: np.ndarray, group: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """``p``'s draws split into (``share`` of its mass on ``group``, the rest on the others), each part keeping p's
    proportions inside it; p unchanged (as (p, 0)) when its draws are all inside or all outside the group."""
    mass = p.sum()
    p_in, p_out = np.where(group, p, 0.0), np.where(group, 0.0, p)
    if share <= 0 or p_in.sum() == 0 or p_out.sum() == 0:
        return p, np.zeros_like(p)
    return mass * share * p_in / p_in.sum(), mass * (1 - share) * p_out / p_out.sum()


class SequenceSampler:
    """Batches of fixed-length sequences from some episodes of a latents file, read per batch from HDF5.

    Only the frames of the batch are read (B contiguous slices), so memory does not grow with the file.
    ``start="episode"``: episodes drawn uniformly, each sequence from the episode's first frame.
    ``start="window"``: episodes drawn in proportion to their length, a window start uniformly inside.
    ``recent`` (bool per episode) with ``recent_share``: that share of draws from the recent episodes, each group
    drawn as above inside itself (a group with no episode leaves the draws to the other). ``low`` with
    ``low_share`` then splits the recent episodes' draws (every draw without ``recent``) the same way between the
    low-return episodes and the others.
    """

    FIELDS = ("mu", "logvar", "action", "reward", "terminated")

    def __init__(self, src: Any, episodes: np.ndarray, seq_len: int, batch_size: int, action_desc: dict[str, Any],
                 start: str = "episode", recent: np.ndarray | None = None, recent_share: float = 0.0,
                 low: np.ndarray | None = None, low_share: float = 0.0):
        if start not in ("episode", "window"):
            raise WorldModelsError(f"sequences must start at 'episode' or 'window', got {start!r}")
        self.src, self.seq_len, self.batch_size, self.action_desc = src, seq_len, batch_size, action_desc
        self.start = start
        rows = src.episodes[episodes]
        self.starts, self.lengths = rows["start"].astype(np.int64), rows["length"].astype(np.int64)
        self.p = (self.lengths / self.lengths.sum() if start == "window"
                  else np.full(len(self.lengths), 1.0 / max(len(self.lengths), 1)))
        if recent is not None and recent_share > 0 and recent.any() and not recent.all():
            p_recent, p_old = _split(self.p, recent, recent_share)
            # the low-return split is the latest episodes' own: older data keeps its draws (in iterate, the original
            # collection's random driving, whose returns are all low)
            self.p = sum(_split(p_recent, low, low_share)) + p_old if low is not None else p_recent + p_old
        elif low is not None:
            self.p = sum(_split(self.p, low, low_share))
        self.z_dim, self.action_dim = int(src.attrs["z_dim"]), action_dim_of(action_desc)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """mu, logvar (B, T+1, Z); action (B, T, A); reward, done, mask (B, T); mask_z (B, T) (has a next z)."""
        B, T, Z = self.batch_size, self.seq_len, self.z_dim
        batch = {"mu": np.zeros((B, T + 1, Z), np.float32), "logvar": np.zeros((B, T + 1, Z), np.float32),
                 "action": np.zeros((B, T, self.action_dim), np.float32), "reward": np.zeros((B, T), np.float32),
                 "done": np.zeros((B, T), np.float32), "mask": np.zeros((B, T), bool), "mask_z": np.zeros((B, T), bool)}
        picks = rng.choice(len(self.starts), size=B, p=self.p)
        for b, e in enumerate(picks):
            length = int(self.lengths[e])
            offset = int(rng.integers(0, max(length - T, 0) + 1)) if self.start == "window" else 0
            lo = int(self.starts[e]) + offset
            n = min(T + 1, length - offset)  # frames read: T inputs and the next z, cut at the episode's end
            for key in ("mu", "logvar"):
                batch[key][b, :n] = self.src.read(key, lo, lo + n)
            steps = min(T, n)
            batch["action"][b, :steps] = actions_to_input(self.src.read("action", lo, lo + steps), self.action_desc)
            batch["reward"][b, :steps] = self.src.read("reward", lo, lo + steps)
            batch["done"][b, :steps] = self.src.read("terminated", lo, lo + steps)
            batch["mask"][b, :steps] = True
            batch["mask_z"][b, :n - 1] = True
        return {k: torch.from_numpy(v) for k, v in batch.items()}


def batch_losses(model: MDRNN, batch: dict[str, torch.Tensor], cfg: Config, device: torch.device,
                 generator: torch.Generator, done_counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Teacher-forced loss: z re-sampled from (mu, logvar), inputs (z_t, a_t), targets z_{t+1}, r_t, d_t.

    ``done_counts`` (4,), if given, accumulates the done head's (hits, ends, false alarms, other steps).
    """
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    z = sample_latents(b["mu"], b["logvar"], generator)  # (B, T+1, Z)
    out, _ = model(z[:, :-1], b["action"], generator=generator)  # (B, T, ...); dropout masks drawn from generator
    if done_counts is not None:
        done_counts += done_head_counts(out.done_logit, b["done"], b["mask"])
    return mdrnn_loss(out, z[:, 1:], b["reward"], b["done"], b["mask_z"], b["mask"], cfg.reward_weight,
                      cfg.done_weight, cfg.done_pos_weight)


def done_head_counts(done_logit: torch.Tensor, done: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(hits, ends, false alarms, other steps) of the dream's rule ``done_logit > 0`` against real ends."""
    fired, end = (done_logit > 0) & mask, (done > 0.5) & mask
    other = mask & ~end
    return torch.stack([(fired & end).sum(), end.sum(), (fired & other).sum(), other.sum()]).double()


@torch.no_grad()
def done_head_report(model: MDRNN, src: Any, episodes: np.ndarray, device: torch.device | str = "cpu") -> dict[str, float]:
    """M teacher-forced on whole episodes from their first frame (z = mu), as the dream starts them: the
    fraction of real deaths (terminated ends) where the done logit is > 0, and of other steps where it is."""
    desc = dict(src.attrs["action_space"])
    counts = torch.zeros(4, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for i in episodes:
        row = src.episodes[int(i)]
        lo, hi = int(row["start"]), int(row["start"] + row["length"])
        z = torch.as_tensor(np.asarray(src.read("mu", lo, hi)), device=device)[None]
        a = torch.as_tensor(actions_to_input(np.asarray(src.read("action", lo, hi)), desc), device=device)[None]
        done = torch.as_tensor(np.asarray(src.read("terminated", lo, hi)), device=device)[None]
        out, _ = model(z, a)
        counts += done_head_counts(out.done_logit, done.float(), torch.ones_like(done, dtype=torch.bool)).cpu()
    model.train(was_training)
    hits, ends, false, other = counts.tolist()
    return {"deaths": int(ends), "recall": hits / ends if ends else float("nan"),
            "false_alarm": false / other if other else float("nan")}


@torch.no_grad()
def evaluate(model: MDRNN, batches: list[dict[str, torch.Tensor]], cfg: Config, device: torch.device) -> dict[str, float]:
    """Mean val/mdrnn/* over fixed validation batches (with a fixed z re-sampling), and the done head's
    recall at real episode ends (when the batches hold any) and false-alarm rate."""
    if not batches:
        return {}
    model.eval()
    g = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    sums = torch.zeros(4, device=device)
    counts = torch.zeros(4, dtype=torch.float64, device=device)
    for batch in batches:
        losses = batch_losses(model, batch, cfg, device, g, counts)
        sums += torch.stack([losses[k] for k in ("loss", "nll", "reward_mse", "done_bce")])
    model.train()
    means = (sums / len(batches)).tolist()
    stats = dict(zip(("val/mdrnn/loss", "val/mdrnn/nll", "val/mdrnn/reward_mse", "val/mdrnn/done_bce"), means))
    hits, ends, false, other = counts.tolist()
    if ends:
        stats["val/mdrnn/done_recall"] = hits / ends
    if other:
        stats["val/mdrnn/done_false_alarm"] = false / other
    return stats


@torch.no_grad()
def draw_dream_vs_real(model: MDRNN, src: Any, episode: int, cfg: Config, out: Path, device: torch.device) -> bool:
    """dream_vs_real.png/.gif: an episode's real frames (top) and M's open-loop dream from its first latent,
    fed the same actions, decoded by V. Returns False (with a warning) when V is missing."""
    from worldmodels import plots
    from worldmodels.models.vae import load_vae, tensor_to_frames

    vae_dir = Path(cfg.vae) if cfg.vae else out.parent / "vae"
    if not checkpoint_file(vae_dir).is_file():
        warnings.warn(f"no V checkpoint at {vae_dir}: skipping dream_vs_real (pass --vae)", stacklevel=3)
        return False
    vae = load_vae(vae_dir, device)
    ep = src.episode(episode, ["mu", "action"])
    n = min(cfg.picture_steps, len(ep["mu"]))
    mu = torch.from_numpy(ep["mu"][:n]).to(device)  # (n, Z)
    actions = torch.from_numpy(actions_to_input(ep["action"][:n], src.attrs["action_space"])).to(device)
    real = _real_frames(src, episode, n)
    if real is None:  # rollouts file gone: V's reconstruction of the real latents stands in
        real = tensor_to_frames(vae.decode(mu))
    model.eval()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    z, state, dream = mu[:1], None, [mu[:1]]
    for t in range(n - 1):
        o, state = model.step(z, actions[t:t + 1], state)
        z = sample_gmm(o.logpi, o.mu, o.logsigma, cfg.picture_temperature, g)  # (1, Z)
        dream.append(z)
    model.train()
    dreamed = tensor_to_frames(vae.decode(torch.cat(dream)))
    plots.dream_vs_real(real, dreamed, out / "dream_vs_real.png",
                        f"episode {episode}: real (top) and M's open-loop dream at tau {cfg.picture_temperature}")
    plots.episode_gif(np.concatenate([real, dreamed], axis=2), out / "dream_vs_real.gif", fps=15)
    return True


def _real_frames(src: Any, episode: int, n: int) -> np.ndarray | None:
    from worldmodels.data import open_rollouts

    path = src.attrs.get("rollouts")
    if not path or not Path(path).is_file():
        return None
    try:
        with open_rollouts(path) as rollouts:
            if rollouts.n_episodes <= episode or int(rollouts.episodes[episode]["length"]) != int(src.episodes[episode]["length"]):
                return None
            start = int(rollouts.episodes[episode]["start"])
            return rollouts.read("obs", start, start + n)
    except WorldModelsError:
        return None


def run(cfg: Config) -> dict[str, Any]:
    """Train (or resume training) M; returns a summary with the checkpoint path and the last metrics."""
    if not cfg.latents or not cfg.out:
        raise WorldModelsError("--latents (a latents.h5) and --out (a run folder such as runs/<name>/mdrnn) are required")
    for key in ("seq_len", "batch_size", "steps", "hidden", "n_gaussians", "eval_every"):
        if getattr(cfg, key) < 1:
            raise WorldModelsError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if not 0 <= cfg.dropout < 1:
        raise WorldModelsError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if not 0 <= cfg.recent_share <= 1 or cfg.recent_files < 1:
        raise WorldModelsError(f"recent_share must be in [0, 1] and recent_files at least 1, got {cfg.recent_share}, "
                               f"{cfg.recent_files}")
    if not 0 <= cfg.low_return_share <= 1 or (cfg.low_return_share > 0 and cfg.low_return is None):
        raise WorldModelsError(f"low_return_share must be in [0, 1], and above 0 it needs --low-return, got "
                               f"{cfg.low_return_share}, {cfg.low_return}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / CHECKPOINT_NAME, "train-mdrnn"), \
            EpisodeFiles(split_paths(cfg.latents), LATENTS, same=SAME_DATA) as src:
        return _train(cfg, out, src)


def episode_returns(src: Any) -> np.ndarray:
    """Every episode's return (its rewards' sum), global episode order; each file's rewards read in one go."""
    out = []
    for f in src.files:
        starts = np.asarray(f.episodes["start"], dtype=np.int64)
        total = np.concatenate([[0.0], np.cumsum(f.read("reward", 0, f.n_frames), dtype=np.float64)])
        out.append(total[starts + np.asarray(f.episodes["length"], dtype=np.int64)] - total[starts])
    return np.concatenate(out)


def load_init(model: MDRNN, path: str) -> str:
    """Copy another M's weights into ``model`` (a warm start); returns that M's id. Sizes must match."""
    state = load_checkpoint(path, kind="mdrnn")
    weights = state.get("model") or {}
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    if shapes != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        raise WorldModelsError(f"--init {path}: its M ({state.get('model_args')}) does not match the sizes of this "
                               f"one ({model.config}); sizes must match for a warm start")
    model.load_state_dict(weights)
    return str(state["id"])


def _train(cfg: Config, out: Path, src: Any) -> dict[str, Any]:
    paths = [str(Path(f.path).resolve()) for f in src.files]
    latents_path = paths[0]  # the dream starts from this file's first frames (worldmodels.agent.load_world)
    ckpt_path = out / CHECKPOINT_NAME
    if cfg.fresh:
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    state = load_checkpoint(ckpt_path, kind="mdrnn") if ckpt_path.exists() else None
    # a resumed run keeps the episodes (and so the split) it started with, file by file
    counts = [f.n_episodes for f in src.files]
    if state is not None:
        data = state.get("data", {})
        files = data.get("files") or [{"path": data.get("path"), "n_episodes": data.get("n_episodes")}]
        saved, new = dict(state.get("config") or {}), cfgmod.to_dict(cfg)
        saved.setdefault("dropout", 0.0)  # runs from before these options trained without them
        saved.setdefault("low_return_share", 0.0)
        saved["latents"], new["latents"] = ",".join(str(f["path"]) for f in files), ",".join(paths)
        check_same_run(saved, new, CONTINUATION_SAFE, out)
        counts = [int(f["n_episodes"]) for f in files]
    for f, n in zip(src.files, counts):
        if f.n_episodes < n:
            raise WorldModelsError(f"{f.path} has {f.n_episodes} episodes but this run was trained on {n}; "
                                   "use --fresh to start over on this file")
        if n < 1:
            raise WorldModelsError(f"{f.path} holds no complete episode yet; encode some first")
    n_episodes = sum(counts)
    train_eps, val_eps = split_files(counts, src.first_episodes, cfg.val_fraction, cfg.seed)
    desc = dict(src.attrs["action_space"])
    # the last recent_files files' episodes (the latest rounds of `iterate`)
    recent = train_eps >= src.first_episodes[max(len(counts) - cfg.recent_files, 0)]
    low = episode_returns(src)[train_eps] < cfg.low_return if cfg.low_return_share > 0 else None
    if low is not None:
        pool = recent if cfg.recent_share > 0 else np.ones_like(low)
        tqdm.write(f"train-mdrnn: {int((low & pool).sum())} of {int(pool.sum())} "
                   f"{'latest ' if cfg.recent_share > 0 else ''}training episodes return under {cfg.low_return:g}: "
                   f"{cfg.low_return_share:g} of their draws")
    train = SequenceSampler(src, train_eps, cfg.seq_len, cfg.batch_size, desc, cfg.sequences, recent,
                            cfg.recent_share, low, cfg.low_return_share)
    val_batches = ([SequenceSampler(src, val_eps, cfg.seq_len, cfg.batch_size, desc, cfg.sequences).sample(
        np.random.default_rng([cfg.seed, 99, i])) for i in range(cfg.val_batches)] if len(val_eps) else [])
    cfgmod.save(cfg, out / "config.yaml")

    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model = MDRNN(train.z_dim, train.action_dim, cfg.hidden, cfg.n_gaussians, cfg.dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, run_id = 0, new_id()
    init = state.get("init") if state is not None else None  # the M this one was warm-started from
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, run_id = int(state["step"]), state["id"]
    elif cfg.init:
        init = {"path": str(checkpoint_file(cfg.init).resolve()), "id": load_init(model, cfg.init)}
    # later stages find the env, its action space and the data here (worldmodels.agent.load_world)
    record = {**cfgmod.to_dict(cfg), "latents": latents_path, "env": src.attrs["env"], "action_space": desc,
              "z_dim": train.z_dim}
    tqdm.write(f"train-mdrnn: {len(train_eps)} training episodes, {len(val_eps)} validation episodes, "
               f"device {device}, steps {start + 1}..{cfg.steps}")
    g = torch.Generator(device=device)
    stats: dict[str, float] = dict(state.get("metrics", {})) if state else {}
    sums, n_sums, t0, saved_step = torch.zeros(4, device=device), 0, time.perf_counter(), start
    with MetricsLogger(out / "metrics.jsonl", step_key="step", resume_from=start + 1 if start else None,
                       tensorboard=cfg.tensorboard) as log:
        bar = tqdm(range(start, cfg.steps), desc="train-mdrnn", unit="step", dynamic_ncols=True,
                   initial=start, total=cfg.steps)
        for step in bar:
            batch = train.sample(np.random.default_rng([cfg.seed, step]))  # per-step streams: resume-exact
            g.manual_seed(cfg.seed * 1_000_003 + step)
            losses = batch_losses(model, batch, cfg, device, g)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sums += torch.stack([losses[k].detach() for k in ("loss", "nll", "reward_mse", "done_bce")])
            n_sums += 1
            if (step + 1) % cfg.eval_every and step + 1 != cfg.steps:
                continue
            means = (sums / n_sums).tolist()
            stats = dict(zip(("mdrnn/loss", "mdrnn/nll", "mdrnn/reward_mse", "mdrnn/done_bce"), means))
            finite_or_stop(stats, f"before step {step + 1}", out, "step", saved_step)
            stats.update(evaluate(model, val_batches, cfg, device))
            finite_or_stop(stats, f"in validation at step {step + 1}", out, "step", saved_step)
            stats["mdrnn/sequences_per_s"] = n_sums * cfg.batch_size / (time.perf_counter() - t0)
            log.log(step + 1, **stats)
            save_checkpoint(ckpt_path, "mdrnn", {
                "id": run_id, "model": model.state_dict(), "model_args": model.config, "optimizer": opt.state_dict(),
                "step": step + 1, "config": record, "metrics": stats, "init": init,
                "data": {"path": latents_path, "n_episodes": n_episodes, "val_episodes": val_eps.tolist(),
                         "files": [{"path": p, "n_episodes": n} for p, n in zip(paths, counts)]}})
            saved_step = step + 1
            bar.set_postfix(nll=f"{stats['mdrnn/nll']:.3f}", val=f"{stats.get('val/mdrnn/nll', float('nan')):.3f}")
            sums.zero_()
            n_sums, t0 = 0, time.perf_counter()
        bar.close()
        picture = False
        if cfg.picture_steps > 0 and (start < cfg.steps or not (out / "dream_vs_real.png").exists()):
            file, episode = src.locate(int(val_eps[0]) if len(val_eps) else int(train_eps[0]))
            picture = draw_dream_vs_real(model, src.files[file], episode, cfg, out, device)
            log.image("mdrnn/dream_vs_real", out / "dream_vs_real.png", max(start, cfg.steps))
    return {"checkpoint": str(ckpt_path), "id": run_id, "step": max(start, cfg.steps), "metrics": stats,
            "picture": picture, "val_episodes": val_eps.tolist(), "train_episodes": train_eps.tolist()}

