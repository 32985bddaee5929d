"""Where a dream-evolved C loses points on real tracks, against where its dream pays.

    python results/carracing-dream-expert/laps.py RUN [--episodes 20] [--dream-episodes 64]

RUN is a run folder with vae/, mdrnn/ and controller/ (e.g. results/carracing-dream-expert/iterate-final). C (its
``evaluate --params auto`` parameters) plays the first N evaluation tracks (``evaluate``'s seeds, reference env,
one process) while the lap is followed in the env itself: the share of the track's tiles visited, the last step
that paid a tile, and the car's speed. The same C is then dreamt in its training dream (its temperature and return
cap) and without the cap. Printed: per episode what the lap came to, and the mean reward a step by quarter of the
1000 steps, real and dreamt (the dream's by still-running episodes, as the real one), and why unfinished laps
ended short: still driving at step 1000 (the car too slow) or stopped paying long before (tiles missed, so the lap
never completes; CarRacing-v3 ends a lap at the start line once 95 % of its tiles are visited).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

QUARTERS = ((0, 250), (250, 500), (500, 750), (750, 1000))
ROAD = 40 / 6  # CarRacing's TRACK_WIDTH (40 / SCALE): the car is on the road within it of a tile centre


def play_real(world, params: np.ndarray, episodes: int) -> list[dict]:
    from worldmodels.envs import episode_seed, make
    from worldmodels.models.controller import BatchedController
    from worldmodels.models.vae import frames_to_tensor

    ctrl = BatchedController(params[None], world.input_dim, world.action_map.output_dim, world.action_map.bias)
    out = []
    env = make("carracing")
    for i in range(episodes):
        obs, _ = env.reset(seed=episode_seed(0, i, "eval"))
        noise = torch.Generator().manual_seed(i)
        game = env.unwrapped
        h = (torch.zeros(1, world.mdrnn.lstm.hidden_size), torch.zeros(1, world.mdrnn.lstm.hidden_size))
        track = np.array([t[2:4] for t in game.track])  # tile centres, in driving order
        rewards, visited, speed, where, done = [], [], [], [], False
        while not done:
            with torch.no_grad():
                mu, logvar = world.vae.encode(frames_to_tensor(obs[None], "cpu"))
                z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=noise)  # as evaluate samples z
                action = world.action_map(ctrl(torch.cat([z, h[0]], 1)))
                _, h = world.mdrnn.step(z, world.action_map.model_input(action), h)
            obs, reward, terminated, truncated, _ = env.step(world.action_map.env_action(action[0]))
            done = terminated or truncated or len(rewards) + 1 >= 1000
            rewards.append(float(reward))
            visited.append(game.tile_visited_count / len(game.track))
            speed.append(float(np.linalg.norm(game.car.hull.linearVelocity)))
            gap = np.linalg.norm(track - np.asarray(game.car.hull.position), axis=1)
            where.append((int(gap.argmin()), float(gap.min())))
        rewards = np.asarray(rewards)
        paid = np.flatnonzero(rewards > 0)
        last = int(paid[-1]) + 1 if len(paid) else 0
        after = np.array(where[last:]) if last < len(where) else np.zeros((0, 2))
        # after the last paid tile: on the road (nearest tile centre within a road width) and going which way
        # along the track (the nearest tile's index, unwrapped around the lap, falling: against the lap)
        idx = np.unwrap(after[:, 0] * 2 * np.pi / len(track)) * len(track) / (2 * np.pi) if len(after) else after
        on_road = float(np.mean(after[:, 1] < ROAD)) if len(after) else float("nan")
        backwards = len(after) > 1 and idx[-1] < idx[0] - 5
        out.append({"return": rewards.sum(), "length": len(rewards), "visited": visited[-1], "last_paid": last,
                    "speed": float(np.mean(speed)), "rewards": rewards, "on_road": on_road,
                    "backwards": bool(backwards), "finished": visited[-1] >= 1.0})
        print(f"  real {i:3d}: return {rewards.sum():7.1f}, {len(rewards):4d} steps, {visited[-1]:6.1%} of tiles, "
              f"last tile at step {last:4d}, mean speed {out[-1]['speed']:5.1f}"
              + (f"; after it {len(after)} steps, {on_road:.0%} on the road, "
                 f"{'against' if backwards else 'along'} the lap" if len(after) > 1 else ""), flush=True)
    env.close()
    return out


def play_dream(world, params: np.ndarray, tau: float, cap: float | None, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rewards (T, E) of each still-running episode (NaN once ended) and the returns (E,)."""
    from worldmodels.models.controller import BatchedController

    dream = world.dream_factory(tau, 1000, 0, return_cap=cap)(episodes)
    ctrl = BatchedController(params[None], world.input_dim, world.action_map.output_dim, world.action_map.bias,
                             episodes)
    obs, rewards = dream.reset(seed=7), []
    with torch.no_grad():
        for _ in range(1000):
            running = ~dream.done.clone()
            obs, reward, done, _ = dream.step(world.action_map(ctrl(obs)))
            rewards.append(torch.where(running, reward, torch.nan).numpy())
            if bool(done.all()):
                break
    return np.asarray(rewards), dream.returns.numpy()


def by_quarter(rewards: list[np.ndarray] | np.ndarray) -> list[float]:
    """Mean reward a step in each quarter, over the episodes still running then."""
    if isinstance(rewards, list):  # real: one array per episode
        return [float(np.mean(np.concatenate([r[a:b] for r in rewards if len(r) > a]))) for a, b in QUARTERS]
    return [float(np.nanmean(rewards[a:b])) if len(rewards) > a else float("nan") for a, b in QUARTERS]


def main() -> None:
    from worldmodels.agent import load_world
    from worldmodels.checkpoint import load_checkpoint
    from worldmodels.stages.evaluate import controller_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--dream-episodes", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = load_world(args.run, "zh", "cpu")
    state = load_checkpoint(args.run / "controller", kind="controller")
    params, label = controller_params(state, "auto")
    tau, cap = float(state["config"]["temperature"]), state["config"].get("dream_return_cap")
    print(f"{args.run}: C {state['id'][:8]} ({label}); real: {args.episodes} evaluation tracks, reference env")
    real = play_real(world, params, args.episodes)
    returns = np.array([e["return"] for e in real])
    short = [e for e in real if not e["finished"]]
    stopped = [e for e in short if e["last_paid"] < 950]
    missed = [e for e in stopped if e["visited"] >= 0.95]
    lost = [e for e in stopped if e["visited"] < 0.95]
    print(f"real: {returns.mean():.1f} ± {returns.std():.1f}; laps finished {len(real) - len(short)}/{len(real)}; "
          f"{len(short) - len(stopped)} still paying after step 950 (too slow); {len(missed)} with >= 95 % of the "
          f"tiles that stopped paying earlier (a few tiles missed: the lap never ends), mean "
          f"{np.mean([e['return'] for e in missed]) if missed else float('nan'):.0f}; {len(lost)} lost the lap "
          f"(< 95 %), mean {np.mean([e['return'] for e in lost]) if lost else float('nan'):.0f}, of which "
          f"{sum(e['backwards'] for e in lost)} then drove against the lap")
    print("mean reward a step by quarter (steps 0-250, 250-500, 500-750, 750-1000), episodes still running:")
    print("  real                     " + "  ".join(f"{v:6.3f}" for v in by_quarter([e["rewards"] for e in real])))
    for c in (cap, None):
        rewards, dreamt = play_dream(world, params, tau, c, args.dream_episodes)
        name = f"dream tau {tau:g}, cap {c:g}" if c else f"dream tau {tau:g}, no cap"
        print(f"  {name:24s} " + "  ".join(f"{v:6.3f}" for v in by_quarter(rewards))
              + f"   (return {dreamt.mean():.1f} over {args.dream_episodes})")


if __name__ == "__main__":
    main()
