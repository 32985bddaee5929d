"""One change to a round's C search, measured against that round's C on the same 100 reference tracks.

    python results/carracing-dream-expert/ab.py ROUND VARIANT [--episodes 100]

In round ROUND's world (its V and M, from data/carracing-dream-expert/iterate-run), C is evolved again from round
ROUND - 1's C with round ROUND's own search settings (its controller/config.yaml: the same seed, generations,
temperature, dropout and cap) and one change, VARIANT:

    starts-any   dreams start at any of 20,000 frames of the round's own collection (the last C's real driving,
                 off-road excursions and spins included; M's state from the frames before each), not at the first
                 frame of a lap: C practises getting back to the road, which a dream from the start rarely reaches
    no-common    every candidate dreams its own episodes (the rounds before 45), not the same 16
    action-noise C's actions get Gaussian noise of std 0.1 in every dream (train-controller --action-noise 0.1):
                 C is pushed off its line and must correct, as the real C that loses its lap is not; scored
                 without the noise, as round ROUND's C
    swing        a random swing in half the dreams (--augment random_swing, source real, strength 0.5): at one
                 step the dreamed latent is pulled up to halfway to a random frame of the round's collection,
                 the package's generative augmentation as a jolt C must recover from
    long         150 generations instead of the round's 50: is the search, not the dream, what stops C
    long-seed1   long with the next seed (other dreams and CMA-ES draws): how far two such searches differ

The new C is scored on the evaluation tracks (reference env) and compared, per track, with round ROUND's C as
run.sh's stage 6 scored it (iterate-final/eval-test, or eval-test-round-ROUND once a later round replaced it).
Resumable: the search and the evaluation continue where a killed run stopped. The record (C slimmed, its config,
learning curve and the evaluation) is shipped to results/carracing-dream-expert/ab/round-ROUND/VARIANT/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "data" / "carracing-dream-expert" / "iterate-run" / "iterate"
# Each variant: the settings it changes, from the round's folder and its own search settings.
VARIANTS = {
    "starts-any": lambda world, settings: {"dream_starts": "any", "latents": str(world / "latents.h5")},
    "no-common": lambda world, settings: {"dream_common": False},
    "action-noise": lambda world, settings: {"action_noise": 0.1},
    "swing": lambda world, settings: {"augment": ["random_swing"], "augment_options": {
        "random_swing": {"source": "real", "probability": 0.5, "strength": 0.5}}},
    "long": lambda world, settings: {"generations": 3 * settings["generations"]},
    "long-seed1": lambda world, settings: {**VARIANTS["long"](world, settings), "seed": settings["seed"] + 1},
}


def main() -> int:
    sys.path[:0] = [str(ROOT / "results")]
    from ship import slim
    from tables import _paired

    from worldmodels.stages import evaluate, train_controller

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("round", type=int)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    world, before = DATA / f"round-{args.round}", DATA / f"round-{args.round - 1}"
    if not (world / "controller" / "config.yaml").exists() or not (before / "controller").exists():
        print(f"ab.py: rounds {args.round - 1} and {args.round} must be in {DATA}", file=sys.stderr)
        return 1
    final = HERE / "iterate-final"
    round_c = json.loads((world / "round.json").read_text())["stages"]["controller"]["id"]
    baseline = next((p for p in (final / f"eval-test-round-{args.round}" / "returns.csv",
                                 final / "eval-test" / "returns.csv")
                     if p.exists() and json.loads((p.parent / "summary.json").read_text())["controller_id"] == round_c),
                    None)
    if baseline is None:
        print(f"ab.py: round {args.round}'s C has no 100-track evaluation in {final} (run.sh stage 6 makes it)",
              file=sys.stderr)
        return 1
    run = ROOT / "data" / "carracing-dream-expert" / "ab" / f"round-{args.round}" / args.variant
    run.mkdir(parents=True, exist_ok=True)
    for part in ("vae", "mdrnn"):
        if not (run / part).exists():
            (run / part).symlink_to((world / part).resolve())
    settings = yaml.safe_load((world / "controller" / "config.yaml").read_text())
    settings.update(run=str(run), init=str((before / "controller").resolve()), fresh=False, workers=0)
    settings.update(VARIANTS[args.variant](world, settings))
    known = {f.name for f in dataclasses.fields(train_controller.Config)}
    train_controller.run(train_controller.Config(**{k: v for k, v in settings.items() if k in known}))
    summary = evaluate.run(evaluate.Config(run=str(run), episodes=args.episodes, workers=2, env_backend="reference",
                                           gif=False))
    diff = _paired(run / "eval-test" / "returns.csv", baseline)
    print(f"round {args.round}, {args.variant}: {summary['mean']:.1f} ± {summary['std']:.1f} on {args.episodes} "
          f"reference tracks; minus round {args.round}'s C per track: {diff} (95 % bootstrap interval)")
    out = HERE / "ab" / f"round-{args.round}" / args.variant
    if out.exists():
        shutil.rmtree(out)
    slim(str(run / "controller"), str(out / "controller"))
    shutil.copytree(run / "eval-test", out / "eval-test")
    (out / "paired.txt").write_text(f"{args.variant} C minus round {args.round}'s C ({baseline.relative_to(HERE)}), "
                                    f"per track, 95 % bootstrap interval: {diff}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
