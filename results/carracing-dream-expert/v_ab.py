"""Does V limit the dream's C? The same world rebuilt with the kept V and with a V refit on C's own frames.

    python results/carracing-dream-expert/v_ab.py ARM [--episodes 100]

V was learned once, from 500 episodes of brownian driving (results/carracing), and never refit in the rounds: on
the frames C drives its reconstruction error is 1.4x its error on the brownian ones, and most of that is the
corners C loses its laps at, which it draws blurred. Both arms build a world from the same 600 episodes of this
machine's data: round 52's 200 (ab.py's replay) and the 400 of round 52's C with parameter noise 0.1 that
refit_ab.py collected (round 53's seeds). ARM:

    old-v   the kept V (results/carracing/models/vae): its latents of both files are refit_ab.py's and ab.py's
    new-v   V fine-tuned from the kept V for one epoch over both files' frames (5 % of each file's episodes held
            out), both files encoded again

Each arm, in order (every step resumes, and is skipped once done):
 1. M trained afresh on the arm's latents of the 600 episodes: round 52's M's settings (h 256, 5 Gaussians,
    dropout 0.1, whole 1,000-frame episodes, batches of 16, lr 1e-3), 2,000 steps;
 2. C0: round 52's C carried into the arm's world without a search: its raw outputs along the 600 real episodes
    (in round 52's world) regressed on the arm's [z, h] along the same frames (ridge 1e-3): C's behaviour, in the
    arm's features. No real return enters: round 52's C was evolved only in the dream;
 3. C evolved from C0 with round 52's search settings (150 generations of 64 x 16 dreams, tau 1.3, dream dropout
    0.1, cap 933, common dreams from any frame of the 400 new episodes);
 4. C0 and C scored on the 100 evaluation tracks (reference env), paired per track with round 52's C;
 5. a probe of the arm's features: held-out R^2 of a linear fit from z, and from [z, h], to the real reward of the
    next 50 steps (what C must foresee to slow for a corner).
The record (M and C slimmed, the evaluations, paired.txt, v.json with V's reconstruction errors, C0's fit and the
probe) goes to results/carracing-dream-expert/v-ab/ARM/. With --search-seed K, step 3 runs again from C0 with round
52's seed + K (its record in v-ab/ARM/search-seedK/, paired also with the first search's C).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "data" / "carracing-dream-expert"
ROUND = 52
M_STEPS = 2000
RIDGE = 1e-3
# the episodes every arm learns from, as rollouts and as the kept V's latents (ab.py's and refit_ab.py's)
SOURCES = {"round-52": (DATA / "ab-worlds" / f"round-{ROUND}" / "rollouts.h5",
                        DATA / "ab-worlds" / f"round-{ROUND}" / "latents.h5"),
           "round-53": (DATA / "refit-ab" / f"round-{ROUND}" / "data" / "rollouts.h5",
                        DATA / "refit-ab" / f"round-{ROUND}" / "data" / "latents.h5")}


def link(path: Path, target: Path) -> None:
    if not path.exists():
        path.symlink_to(target.resolve())


def episodes(path: Path) -> list[dict[str, np.ndarray]]:
    from worldmodels.data import open_latents

    with open_latents(path) as f:
        return [f.episode(i, ["mu", "action", "reward"]) for i in range(len(f))]


def probe(run: Path, latents: list[Path], ahead: int = 50) -> dict[str, float]:
    """How much of what C must foresee its features hold, linearly: held-out R^2 (every 20th episode) of a ridge
    regression from z, and from [z, h], to the real reward of the next ``ahead`` steps (progress along the track:
    low where the car is about to leave the road), on the 600 episodes."""
    import torch

    from worldmodels.agent import load_world
    from worldmodels.offline import NormalEquations, episode_features

    world = load_world(run)
    z_dim = world.mdrnn.z_dim
    eqs = {"z": NormalEquations(z_dim, 1, True), "zh": NormalEquations(world.input_dim, 1, True)}
    held = []
    torch.set_grad_enabled(False)
    for path in latents:
        eps = episodes(path)
        for start in range(0, len(eps), 50):
            part = eps[start:start + 50]
            for i, (x, ep) in enumerate(zip(episode_features(world, part), part)):
                c = np.concatenate([[0.0], np.cumsum(ep["reward"], dtype=np.float64)])
                t = np.arange(len(x) - ahead)
                x, y = x[t], (c[t + 1 + ahead] - c[t + 1])[:, None]
                if (start + i) % 20 == 0:
                    held.append((x, y))
                else:
                    for name, eq in eqs.items():
                        eq.add(x[:, :z_dim] if name == "z" else x, y, np.ones(len(x)))
    x, y = np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held])[:, 0]
    r2 = {}
    for name, eq in eqs.items():
        theta = eq.solve(RIDGE)
        xs = x[:, :z_dim] if name == "z" else x
        r2[name] = float(1 - ((xs @ theta[:-1] + theta[-1] - y) ** 2).mean() / y.var())
    return r2


def carry_controller(teacher_run: Path, teacher_latents: list[Path], run: Path, latents: list[Path],
                     out: Path) -> dict[str, float]:
    """Step 2: round 52's C's raw outputs along the episodes, in its world, regressed on ``run``'s features of the
    same frames; saved as a controller in ``out``. Returns the fit's R^2 per output on the held-out episodes."""
    import torch

    from worldmodels.agent import load_world
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.offline import NormalEquations, OfflineFit, episode_features, save_offline_controller
    from worldmodels.stages.evaluate import controller_params

    teacher, student = load_world(teacher_run), load_world(run)
    params, _ = controller_params(load_checkpoint(teacher_run / "controller", kind="controller"), "auto")
    n_out = teacher.action_map.output_dim
    weight, bias = params[:-n_out].reshape(n_out, -1), params[-n_out:]
    eq = NormalEquations(student.input_dim, n_out, student.action_map.bias)
    held = []  # every 20th episode: the fit's check
    torch.set_grad_enabled(False)
    for t_path, s_path in zip(teacher_latents, latents):
        t_eps, s_eps = episodes(t_path), episodes(s_path)
        for start in range(0, len(t_eps), 50):
            xt = episode_features(teacher, t_eps[start:start + 50])
            xs = episode_features(student, s_eps[start:start + 50])
            for i, (a, b) in enumerate(zip(xt, xs)):
                y = a @ weight.T + bias
                if (start + i) % 20 == 0:
                    held.append((b, y))
                else:
                    eq.add(b, y, np.ones(len(b)))
    fit = eq.solve(RIDGE)
    w, b0 = fit[:-n_out].reshape(n_out, -1), fit[-n_out:]
    x, y = np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held])
    pred = x @ w.T + b0
    r2 = {name: float(1 - ((pred[:, k] - y[:, k]) ** 2).mean() / y[:, k].var())
          for k, name in enumerate(("steer", "gas", "brake"))}
    out.mkdir(parents=True, exist_ok=True)
    save_offline_controller(out, OfflineFit(fit, {"carried_from": str(teacher_run / "controller"), "ridge": RIDGE,
                                                  "held_out_r2": r2}), student,
                            {"run": str(run), "obs_mode": "zh", "where": "offline"})
    return r2


def reconstruction_errors(vae_dir: Path) -> dict[str, float]:
    """V's mean summed squared error per frame on ~4,000 frames of each file's last 5 % of episodes (the refit V
    holds out 5 % of each file's episodes at random, so some of these frames were in its training)."""
    import h5py
    import torch

    from worldmodels.models.vae import frames_to_tensor, load_vae

    vae = load_vae(vae_dir)
    errors = {}
    for name, (rollouts, _) in SOURCES.items():
        with h5py.File(rollouts, "r") as f:
            eps = f["episodes"][:]
            last = eps[-len(eps) // 20:]  # the last 5 % of episodes (not all held out by V's split)
            rng = np.random.default_rng(0)
            idx = np.unique(np.concatenate([s + rng.integers(0, n, 4000 // len(last)) for s, n, *_ in last]))
            with torch.no_grad():
                x = frames_to_tensor(f["obs"][idx])
                errors[name] = float(((vae(x)[0] - x) ** 2).sum((1, 2, 3)).mean())
    return errors


def score(run: Path, episodes_: int) -> dict:
    from ship import scored

    from worldmodels.stages import evaluate

    if not scored(str(run)):
        evaluate.run(evaluate.Config(run=str(run), episodes=episodes_, workers=2, env_backend="reference", gif=False))
    return json.loads((run / "eval-test" / "summary.json").read_text())


def main() -> int:
    sys.path[:0] = [str(ROOT / "results"), str(HERE)]
    os.chdir(ROOT)  # V's record names its files relative to the repository
    from ab import round_evaluation, round_world
    from ship import RECORD, slim
    from tables import _paired

    from worldmodels.stages import encode, iterate, train_controller, train_mdrnn, train_vae

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("arm", choices=("old-v", "new-v"))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--search-seed", type=int, default=0,
                        help="K > 0: C's search again from C0 with round 52's seed + K (search-seedK/)")
    args = parser.parse_args()
    world = round_world(ROUND, latents=False)
    baseline = round_evaluation(ROUND, world) if world is not None else None
    missing = [str(p) for pair in SOURCES.values() for p in pair if not p.is_file()]
    if baseline is None or missing:
        print(f"v_ab.py: needs round {ROUND}'s world and evaluation (ab.py) and the episodes of ab.py {ROUND} and "
              f"refit_ab.py {ROUND} plain; missing: {', '.join(missing) or 'the evaluation'}", file=sys.stderr)
        return 1
    base = DATA / "v-ab"
    run = base / args.arm
    run.mkdir(parents=True, exist_ok=True)
    kept_v = HERE / "models" / "vae"
    if args.arm == "old-v":
        link(run / "vae", kept_v)
        latents = [pair[1] for pair in SOURCES.values()]
    else:
        made = base / "vae" / "config.yaml"  # a V begun elsewhere (e.g. by the CLI) resumes with its own settings
        train_vae.run(iterate._stage_config(train_vae, yaml.safe_load(made.read_text())) if made.is_file() else
                      iterate._stage_config(train_vae, {}, data=",".join(str(p[0]) for p in SOURCES.values()),
                                            out=str(base / "vae"), init=str(kept_v.resolve()), epochs=1, workers=1))
        link(run / "vae", base / "vae")
        latents = []
        for name, (rollouts, _) in SOURCES.items():
            latents.append(run / f"{name}-latents.h5")
            encode.run(encode.Config(data=str(rollouts), vae=str(run / "vae"), out=str(latents[-1]), batch_size=500))
    v_errors = reconstruction_errors(run / "vae")
    print(f"{args.arm}: V's reconstruction error per frame on the files' last episodes: {v_errors}")

    # 1. M afresh, round 52's M's settings
    saved = iterate._saved_config(world / "mdrnn", "mdrnn")
    m = train_mdrnn.run(iterate._stage_config(
        train_mdrnn, saved, latents=",".join(map(str, latents)), out=str(run / "mdrnn"), vae=str(run / "vae"),
        init=None, steps=M_STEPS, recent_share=0.0, fresh=False))

    # 2. C0: round 52's C carried into this world
    c0 = run / "c0"
    c0.mkdir(exist_ok=True)
    for part in ("vae", "mdrnn"):
        link(c0 / part, run / part)
    fit_file = c0 / "fit.json"
    if not fit_file.is_file():
        r2 = carry_controller(round_world(ROUND, latents=True), [p[1] for p in SOURCES.values()], run, latents,
                              c0 / "controller")
        fit_file.write_text(json.dumps({"held_out_r2": r2}, indent=1) + "\n")
    r2 = json.loads(fit_file.read_text())["held_out_r2"]
    print(f"{args.arm}: C0 fits round {ROUND}'s C's raw outputs on held-out episodes, R^2 {r2}")

    # 3. C from C0 with round 52's search settings, dreaming from any frame of the 400 new episodes
    settings = yaml.safe_load((world / "controller" / "config.yaml").read_text())
    search, out = run, HERE / "v-ab" / args.arm
    if args.search_seed:  # another search in the same world: its own folder
        search, out = run / f"search-seed{args.search_seed}", out / f"search-seed{args.search_seed}"
        search.mkdir(exist_ok=True)
        for part in ("vae", "mdrnn"):
            link(search / part, run / part)
    settings.update(run=str(search), init=str(c0 / "controller"), fresh=False, workers=0, latents=str(latents[1]),
                    seed=settings["seed"] + args.search_seed)
    train_controller.run(iterate._stage_config(train_controller, settings))

    # 4. both on the evaluation tracks, paired with round 52's C
    lines, summaries = [], {}
    for name, folder in ((("C0", c0),) if not args.search_seed else ()) + (("C", search),):
        summaries[name] = score(folder, args.episodes)
        diff = _paired(folder / "eval-test" / "returns.csv", baseline)
        lines.append(f"{args.arm} {name}: {summaries[name]['mean']:.1f} ± {summaries[name]['std']:.1f} on "
                     f"{summaries[name]['episodes']} reference tracks; minus round {ROUND}'s C per track, 95 % "
                     f"bootstrap interval: {diff}")
    if args.search_seed:
        other = HERE / "v-ab" / args.arm / "eval-test" / "returns.csv"
        lines.append(f"{args.arm} C, search seed +{args.search_seed}, minus the first search's: "
                     f"{_paired(search / 'eval-test' / 'returns.csv', other)}")
    print("\n".join(lines))
    for part in ("mdrnn", "controller", "c0", "eval-test"):
        shutil.rmtree(out / part, ignore_errors=True)
    slim(str(search / "controller"), str(out / "controller"))
    shutil.copytree(search / "eval-test", out / "eval-test")
    (out / "paired.txt").write_text("\n".join(lines) + "\n")
    if args.search_seed:
        return 0
    slim(str(run / "mdrnn"), str(out / "mdrnn"), record=tuple(p for p in RECORD if p != "*.gif"))
    slim(str(c0 / "controller"), str(out / "c0" / "controller"))
    shutil.copytree(c0 / "eval-test", out / "c0" / "eval-test")
    foresight = probe(run, latents)
    print(f"{args.arm}: held-out R^2 of the next 50 steps' reward from z, and from [z, h]: {foresight}")
    (out / "v.json").write_text(json.dumps({"reconstruction_error": v_errors, "c0_held_out_r2": r2,
                                            "next_50_reward_r2": foresight,
                                            "mdrnn_val": m["metrics"].get("val/mdrnn/loss")}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from worldmodels.errors import WorldModelsError

    try:
        sys.exit(main())
    except WorldModelsError as e:
        sys.exit(f"v_ab.py: {e}")
