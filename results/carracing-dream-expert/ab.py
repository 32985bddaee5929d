"""One change to a round's C search, measured against that round's C on the same 100 reference tracks.

    python results/carracing-dream-expert/ab.py ROUND VARIANT [--episodes 100]

In round ROUND's world (its V and M, from data/carracing-dream-expert/iterate-run; on a machine without the
campaign's data, from the shipped rounds in results/carracing-dream-expert/iterate, with round ROUND's episodes
played again by round ROUND - 1's C on the round's seeds and noise, ~2 min), C is evolved again from round ROUND - 1's
C with round ROUND's own search settings (its controller/config.yaml: the same seed, generations, temperature,
dropout and cap) and one change, VARIANT:

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
    worlds       every dream episode draws one of three Ms: round ROUND's and rounds ROUND - 1 and ROUND - 2's
                 (train-controller --dream-models): C is chosen on what the last worlds agree on, not on one M's
                 quirks (from one round's M to the next, C's real score moves by ~40)
    dropout0     no dream dropout (the plain M, τ and starts unchanged): on round 52's world the best-ranking
                 setting by fidelity on train-purpose tracks (fidelity-round-52: Spearman +0.44 against +0.23)
    rollouts-x3  3 x the dream episodes per candidate and a third of the generations: as many dream steps,
                 each generation's ranking with less of the dreams' luck in it

The new C is scored on the evaluation tracks (reference env) and compared, per track, with round ROUND's C as
run.sh's stage 6 scored it (iterate-final/eval-test, or eval-test-round-ROUND once a later round replaced it).
Resumable: the search and the evaluation continue where a killed run stopped. The record (C slimmed, its config,
learning curve and the evaluation) is shipped to results/carracing-dream-expert/ab/round-ROUND/VARIANT/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "data" / "carracing-dream-expert" / "iterate-run" / "iterate"
SHIPPED_WORLDS = ROOT / "data" / "carracing-dream-expert" / "ab-worlds"  # rounds made from results' shipped ones
# Each variant: the settings it changes, from the round's folder and its own search settings.
VARIANTS = {
    "starts-any": lambda world, settings: {"dream_starts": "any", "latents": str(world / "latents.h5")},
    "no-common": lambda world, settings: {"dream_common": False},
    "action-noise": lambda world, settings: {"action_noise": 0.1},
    "swing": lambda world, settings: {"augment": ["random_swing"], "augment_options": {
        "random_swing": {"source": "real", "probability": 0.5, "strength": 0.5}}},
    "long": lambda world, settings: {"generations": 3 * settings["generations"]},
    "long-seed1": lambda world, settings: {**VARIANTS["long"](world, settings), "seed": settings["seed"] + 1},
    "dropout0": lambda world, settings: {"dream_dropout": 0.0},
    "rollouts-x3": lambda world, settings: {"rollouts": 3 * settings["rollouts"],
                                            "generations": settings["generations"] // 3},
    "worlds": lambda world, settings: {"dream_models": [
        str((earlier / "mdrnn").resolve()) for k in (1, 2)
        if (earlier := round_world(int(world.name.split("-")[1]) - k, latents=False)) is not None]},
}


def shipped_round(r: int) -> Path | None:
    """Round r's folder made from results' shipped round (links to the kept V and its M and C, and its record),
    without its episodes; None if it is not shipped."""
    shipped = HERE / "iterate" / f"round-{r}"
    if not (shipped / "round.json").is_file():
        return None
    out = SHIPPED_WORLDS / f"round-{r}"
    out.mkdir(parents=True, exist_ok=True)
    for part, target in (("vae", HERE / "models" / "vae"), ("mdrnn", shipped / "mdrnn"),
                         ("controller", shipped / "controller"), ("round.json", shipped / "round.json")):
        if not (out / part).exists():
            (out / part).symlink_to(target.resolve())
    return out


def round_world(r: int, latents: bool) -> Path | None:
    """Round r's folder: the campaign's where this machine has it, else :func:`shipped_round`'s; with
    ``latents``, one that holds the round's episodes encoded (latents.h5), played again by round r - 1's C on
    the round's seeds with its noise when the campaign's are not here (iterate's own collection)."""
    campaign = DATA / f"round-{r}"
    if (campaign / "controller" / "config.yaml").is_file() and (not latents or (campaign / "latents.h5").is_file()):
        return campaign
    world = shipped_round(r)
    if world is None or not latents:
        return world
    before = shipped_round(r - 1)
    if before is None:
        return None
    from worldmodels.stages import iterate

    cfg = iterate._stage_config(iterate, yaml.safe_load((HERE / "iterate" / "config.yaml").read_text()))
    played = json.loads((world / "round.json").read_text())["stages"]["collect"]
    # resumes a killed collection, and only checks a finished one
    iterate.collect(cfg, r, before, world / "rollouts.h5", played["seed"], played["max_steps"],
                    env_backend=played["env_backend"], param_noise=played["param_noise"], noise=played["noise"],
                    latents=world / "latents.h5")
    return world


def round_evaluation(r: int, world: Path) -> Path | None:
    """returns.csv of round r's C (the C of ``world``, round r's folder) on the 100 evaluation tracks, as run.sh's
    stage 6 scored it: iterate-final/eval-test, or eval-test-round-r once a later round took its place."""
    final = HERE / "iterate-final"
    round_c = json.loads((world / "round.json").read_text())["stages"]["controller"]["id"]
    return next((p for p in (final / f"eval-test-round-{r}" / "returns.csv", final / "eval-test" / "returns.csv")
                 if p.exists() and json.loads((p.parent / "summary.json").read_text())["controller_id"] == round_c),
                None)


def main() -> int:
    sys.path[:0] = [str(ROOT / "results")]
    from ship import slim
    from tables import _paired

    from worldmodels.stages import evaluate, iterate, train_controller

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("round", type=int)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    before, record = round_world(args.round - 1, latents=False), round_world(args.round, latents=False)
    if before is None or record is None:
        print(f"ab.py: rounds {args.round - 1} and {args.round} must be in {DATA} or {HERE / 'iterate'}",
              file=sys.stderr)
        return 1
    baseline = round_evaluation(args.round, record)
    if baseline is None:
        print(f"ab.py: round {args.round}'s C has no 100-track evaluation in {HERE / 'iterate-final'} (run.sh stage 6 "
              "makes it)", file=sys.stderr)
        return 1
    world = round_world(args.round, latents=True)
    run = ROOT / "data" / "carracing-dream-expert" / "ab" / f"round-{args.round}" / args.variant
    run.mkdir(parents=True, exist_ok=True)
    for part in ("vae", "mdrnn"):
        if not (run / part).exists():
            (run / part).symlink_to((world / part).resolve())
    settings = yaml.safe_load((world / "controller" / "config.yaml").read_text())
    settings.update(run=str(run), init=str((before / "controller").resolve()), fresh=False, workers=0)
    if settings.get("dream_starts") == "any":  # the round's episodes, wherever this machine keeps them
        settings["latents"] = str(world / "latents.h5")
    elif not settings.get("latents") and world.parent == SHIPPED_WORLDS:  # run.sh's first frames (M's are not here)
        settings["latents"] = str(HERE / "models" / "starts.h5")
    settings.update(VARIANTS[args.variant](world, settings))
    train_controller.run(iterate._stage_config(train_controller, settings))
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
