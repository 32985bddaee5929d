"""How often one C loses its lap in the dreams of several Ms: the dream's return under 600, as a lost lap's real one.

    python results/carracing-dream-expert/dream_lost.py CONTROLLER MDRNN [MDRNN ...] [--episodes 400]

CONTROLLER is a controller folder (its CMA-ES mean solution picked as `evaluate --params auto` does); each MDRNN an M
folder of this world (the kept V, results/carracing-dream-expert/models/vae). Every M dreams the same episodes (the
same dream seed) from the first frames of models/starts.h5 for 1,000 steps at C's training τ with its return cap,
once with the plain M and once with C's training dream dropout. In the game C's lost laps are the returns under 600
(laps.py): round 52's C loses 39 of the 100 evaluation tracks so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LOST = 600.0


def main() -> int:
    from worldmodels.agent import load_world
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.models.controller import BatchedController, rollout_dream
    from worldmodels.stages.evaluate import DREAM_EVAL_PURPOSE, controller_params
    from worldmodels.stages.train_controller import dream_seed

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("controller")
    parser.add_argument("mdrnn", nargs="+")
    parser.add_argument("--episodes", type=int, default=400)
    args = parser.parse_args()
    state = load_checkpoint(args.controller, kind="controller")
    params, _ = controller_params(state, "auto")
    trained = state["config"]
    tau, cap = float(trained["temperature"]), trained.get("dream_return_cap")
    print(f"| M | dream dropout | C's dream return | dreams under {LOST:g} | under 300 |\n|---|---:|---:|---:|---:|")
    for m in args.mdrnn:
        with tempfile.TemporaryDirectory() as tmp:  # a run folder of links: V and this M
            (Path(tmp) / "vae").symlink_to((HERE / "models" / "vae").resolve())
            (Path(tmp) / "mdrnn").symlink_to(Path(m).resolve())
            world = load_world(Path(tmp), state["identity"]["obs_mode"], latents=str(HERE / "models" / "starts.h5"))
            for dropout in sorted({0.0, float(trained.get("dream_dropout") or 0.0)}):
                dream = world.dream_factory(tau, 1000, 0, dropout=dropout, starts="any", return_cap=cap)(args.episodes)
                ctrl = BatchedController(params[None], world.input_dim, world.action_map.output_dim,
                                         world.action_map.bias, args.episodes, device=world.device)
                r = np.asarray(rollout_dream(dream, ctrl, world.action_map, dream_seed(0, 0, DREAM_EVAL_PURPOSE)))
                print(f"| {m} | {dropout:g} | {r.mean():.0f} ± {r.std():.0f} | {np.mean(r < LOST):.0%} | "
                      f"{np.mean(r < 300):.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
