"""Round 53's search in the lost-laps-weighted M again with the next seed (other dreams and CMA-ES draws):
refit_ab.py's steps 3 and 4 with round 52's search seed + 1. Run from the repository root after
`python results/carracing-dream-expert/refit_ab.py 52 failures`."""
from pathlib import Path

import yaml

from worldmodels.stages import evaluate, iterate, train_controller

if __name__ == "__main__":  # evaluate's workers import this file
    base = Path("data/carracing-dream-expert/refit-ab/round-52")
    world = Path("data/carracing-dream-expert/ab-worlds/round-52")
    run = base / "failures-search-seed1"
    run.mkdir(parents=True, exist_ok=True)
    for part in ("vae", "mdrnn"):
        if not (run / part).exists():
            (run / part).symlink_to((base / "failures" / part).resolve())
    settings = yaml.safe_load((world / "controller" / "config.yaml").read_text())
    settings.update(run=str(run), init=str((world / "controller").resolve()), fresh=False, workers=0,
                    latents=str(base / "data" / "latents.h5"), seed=settings["seed"] + 1)
    train_controller.run(iterate._stage_config(train_controller, settings))
    evaluate.run(evaluate.Config(run=str(run), episodes=100, workers=2, env_backend="reference", gif=False))
