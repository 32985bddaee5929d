"""One change to how M is refit for the next round, measured on the 100 reference tracks.

    python results/carracing-dream-expert/refit_ab.py ROUND VARIANT [--rounds 1] [--episodes 100]

From round ROUND's world (ab.py's: its V, M and C, and its 200 episodes, played again on a machine without the
campaign's data), the next round is played on this machine's data alone:
 1. 400 episodes of round ROUND's C with parameter noise 0.1 (the rounds' exploration; round ROUND + 1's seeds,
    fast backend), shared by the variants;
 2. M refit warm from round ROUND's M for 1,000 steps (the rounds' refit) on round ROUND's 200 and these 400
    episodes, split by their real return into lost laps (under 600) and the rest; the campaign's refit also draws
    half of each batch from all the earlier rounds' data, which a fresh machine does not hold;
 3. C evolved from round ROUND's C with round ROUND's search settings (its seed, generations, τ, dream dropout, cap,
    common dreams) in the refit M's dream, from any frame of the 400 new episodes;
 4. C scored on the evaluation tracks (reference env) and paired, per track, with round ROUND's C as run.sh's stage
    6 scored it, and with the `plain` variant's C when that exists.
With --rounds N, N such rounds in turn: round ROUND + k collects with the variant's C of round ROUND + k - 1 and
refits that round's M on all the episodes so far (round ROUND's and each new round's), split again by return; each
round's C is also paired with the last one's.
VARIANT changes step 2's sampling, never the data or its split into training and validation episodes:

    plain     every episode drawn alike (in round 52's world the lost laps are 206 of the 600 episodes, 34 %)
    failures  three quarters of each batch from the lost laps (train-mdrnn --recent-share 0.75 over their file;
              ~6 times the weight of another episode in round 52's world): the laps C loses off the road, spun or
              against the lap (laps.py), which its dreams seldom reach, weigh more in M, so its dream leaves the
              road more often and C is chosen on avoiding that

Resumable: collection, M's refit, C's search and the evaluation each continue where a killed run stopped. The record
(M and C slimmed, C's config and learning curve, the evaluation) is shipped to
results/carracing-dream-expert/refit-ab/round-ROUND/VARIANT/ (later rounds in its round-K/). train-mdrnn
--low-return-share draws the same way from one set of files; here the split files also decide the validation
episodes, as they did when these runs were made.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EPISODES = 400  # the new round's episodes: twice a campaign round's, as no earlier round's data is here
LOST = 600.0  # a real return under this is a lost lap (laps.py: lost laps scored 416, the others 665-921)
VARIANTS = {"plain": 0.0, "failures": 0.75}  # each variant's share of a batch from the lost laps


def split_by_return(sources: list[Path], out: Path) -> dict[str, int]:
    """Every episode of ``sources`` into out/kept.h5 and out/lost.h5 by its real return (under LOST: lost);
    returns the count in each. Skipped when both files exist (they are written atomically)."""
    from ship import repack

    from worldmodels.data import LATENTS, EpisodeWriter, open_latents

    files = {name: out / f"{name}.h5" for name in ("kept", "lost")}
    if all(p.is_file() for p in files.values()):
        counts = {}
        for name, p in files.items():
            with open_latents(p) as f:
                counts[name] = len(f)
        return counts
    with open_latents(sources[0]) as f:
        attrs = {k: v for k, v in f.attrs.items() if k not in ("schema", "schema_version", "worldmodels_version",
                                                                  "json_attrs")}
    tmp = {name: p.with_suffix(".unpacked.h5") for name, p in files.items()}
    counts = {"kept": 0, "lost": 0}
    with EpisodeWriter(tmp["kept"], LATENTS, attrs, fresh=True) as kept, \
            EpisodeWriter(tmp["lost"], LATENTS, attrs, fresh=True) as lost:
        for src in sources:
            with open_latents(src) as f:
                for i in range(len(f)):
                    ep = f.episode(i)
                    name = "lost" if float(np.sum(ep["reward"])) < LOST else "kept"
                    row = f.episodes[i]
                    (lost if name == "lost" else kept).append(ep, seed=int(row["seed"]), level=int(row["level"]))
                    counts[name] += 1
    for name in files:
        repack(tmp[name], str(files[name]))
        tmp[name].unlink()
    return counts


def main() -> int:
    sys.path[:0] = [str(ROOT / "results"), str(HERE)]
    from ab import round_evaluation, round_world
    from ship import RECORD, scored, slim
    from tables import _paired

    from worldmodels.stages import evaluate, iterate, train_controller, train_mdrnn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("round", type=int)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1,
                        help="successive rounds, each collecting with the last C and refitting the last M")
    args = parser.parse_args()
    r = args.round
    record = round_world(r, latents=False)
    baseline = round_evaluation(r, record) if record is not None else None
    if baseline is None:
        print(f"refit_ab.py: round {r} must be shipped in {HERE / 'iterate'} with its C's 100-track evaluation in "
              f"{HERE / 'iterate-final'} (run.sh stage 6 makes it)", file=sys.stderr)
        return 1
    world = round_world(r, latents=True)
    base = ROOT / "data" / "carracing-dream-expert" / "refit-ab" / f"round-{r}"
    cfg = iterate._stage_config(iterate, yaml.safe_load((HERE / "iterate" / "config.yaml").read_text()),
                                episodes=EPISODES, noise=0.0, param_noise=0.1)
    prev, sources, compare = world, [world / "latents.h5"], [(f"round {r}'s C", baseline)]
    for k in range(1, args.rounds + 1):
        n = r + k
        # the first new round's episodes are played by round r's C, shared by the variants; later ones by the
        # variant's own last C
        data = base / "data" if k == 1 else base / args.variant / f"round-{n}" / "data"
        run = base / args.variant if k == 1 else base / args.variant / f"round-{n}"
        out = HERE / "refit-ab" / f"round-{r}" / args.variant / ("" if k == 1 else f"round-{n}")
        data.mkdir(parents=True, exist_ok=True)

        # 1. the round's episodes (iterate's own collection: resumes, and only checks a finished file)
        iterate.collect(cfg, n, prev, data / "rollouts.h5", seed=0, max_steps=None, env_backend="fast",
                        latents=data / "latents.h5")
        sources.append(data / "latents.h5")
        counts = split_by_return(sources, data)
        print(f"round {n}: {counts['lost']} lost laps (return under {LOST:g}) and {counts['kept']} others in "
              f"round {r}'s and the {k} new round(s)' episodes")

        # 2. M refit warm from the last M, the variant's share of each batch from the lost laps
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "vae").exists():
            (run / "vae").symlink_to((world / "vae").resolve())
        saved = iterate._saved_config(world / "mdrnn", "mdrnn")
        m = train_mdrnn.run(iterate._stage_config(
            train_mdrnn, saved, latents=f"{data / 'kept.h5'},{data / 'lost.h5'}", out=str(run / "mdrnn"),
            vae=str(run / "vae"), init=str((prev / "mdrnn").resolve()), steps=cfg.mdrnn_steps,
            recent_share=VARIANTS[args.variant], recent_files=1, fresh=False))

        # 3. C from the last C, in the refit M's dream, with round r's search settings
        settings = yaml.safe_load((world / "controller" / "config.yaml").read_text())
        settings.update(run=str(run), init=str((prev / "controller").resolve()), fresh=False, workers=0,
                        latents=str(data / "latents.h5"))
        train_controller.run(iterate._stage_config(train_controller, settings))

        # 4. the evaluation tracks (once per C), paired with round r's C, the plain refit's and the last round's
        if not scored(str(run)):
            evaluate.run(evaluate.Config(run=str(run), episodes=args.episodes, workers=2,
                                         env_backend="reference", gif=False))
        summary = json.loads((run / "eval-test" / "summary.json").read_text())
        plain = HERE / "refit-ab" / f"round-{r}" / "plain" / "eval-test" / "returns.csv"  # as shipped
        if k == 1 and args.variant != "plain" and plain.exists():
            compare.append(("the plain refit's C", plain))
        lines = [f"{args.variant} round {n}'s C minus {name} ({path.relative_to(ROOT)}), per track, 95 % bootstrap "
                 f"interval: {_paired(run / 'eval-test' / 'returns.csv', path)}" for name, path in compare]
        print(f"round {n}, refit {args.variant}: {summary['mean']:.1f} ± {summary['std']:.1f} on "
              f"{summary['episodes']} reference tracks; M's validation loss {m['metrics'].get('val/mdrnn/loss')}")
        print("\n".join(lines))
        if out.exists():
            for part in ("mdrnn", "controller", "eval-test"):
                shutil.rmtree(out / part, ignore_errors=True)
        # M without its 2 MB GIF, as iterate's rounds ship theirs: a record beside C, not a shipped model
        slim(str(run / "mdrnn"), str(out / "mdrnn"), record=tuple(p for p in RECORD if p != "*.gif"))
        slim(str(run / "controller"), str(out / "controller"))
        shutil.copytree(run / "eval-test", out / "eval-test")
        (out / "paired.txt").write_text("\n".join(lines) + "\n")
        (out / "data.json").write_text(json.dumps({"round": n, "from_round": r, "new_episodes": EPISODES * k,
                                                   "lost_below": LOST, "lost_share": VARIANTS[args.variant],
                                                   **counts}, indent=1) + "\n")
        prev, compare = run, compare[:1] + [(f"round {n}'s refit C", out / "eval-test" / "returns.csv")]
    return 0


if __name__ == "__main__":
    sys.exit(main())
