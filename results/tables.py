"""Build the results tables of README.md from the raw per-episode files committed under results/.

    python results/tables.py random-policy ROLLOUTS.h5 OUT.csv   per-episode returns of a collected file
    python results/tables.py doom results/doom                    the Doom temperature table (markdown)
    python results/tables.py carracing results/carracing          the CarRacing table (markdown)
    python results/tables.py carracing-dream results/carracing-dream   rounds of iterate, the final C, the anchors
    python results/tables.py procgen-study STUDY_OUT DEST        the study's tables from every finished cell so far
                                                                 (in DEST), and README's compact table
    python results/tables.py done-head DATA_DIR                  how often M's done head fires at real deaths
    python results/tables.py cost results/doom [CORES]           wall-clock per stage and core-hours (timings.tsv)

Every number in a table is computed here from returns.csv files; nothing is typed in by hand except the
paper's published figures (../shared/REFERENCE.md), which sit beside ours for comparison.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

from worldmodels.stages.report import PAPER_DOOM as PAPER_DOOM_REAL, PAPER_DOOM_DREAM

PAPER_DOOM = {f"{tau:.2f}": (PAPER_DOOM_DREAM[tau], real) for tau, real in PAPER_DOOM_REAL.items()}
PAPER_DOOM["random"] = ("—", "210 ± 108")
PAPER_CARRACING = {"full (z, h), C in the real env": "906 ± 21", "V only (z), C in the real env": "632 ± 251",
                   "full (z, h), C in the dream": "—"}


def returns(path: Path) -> np.ndarray:
    with open(path) as fh:
        return np.array([float(row["return"]) for row in csv.DictReader(fh)])


def fmt(values: np.ndarray) -> str:
    return f"{values.mean():.0f} ± {values.std():.0f}"


def random_policy(rollouts: str, out: str) -> None:
    from worldmodels.data import open_rollouts

    with open_rollouts(rollouts) as f:
        eps = f.episodes
        rows = [(i, int(eps["seed"][i]), float(f.read("reward", int(eps["start"][i]), int(eps["start"][i] + eps["length"][i])).sum()),
                 int(eps["length"][i])) for i in range(f.n_episodes)]
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["episode", "seed", "return", "length"])
        w.writerows(rows)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def identical(a: Path, b: Path) -> float:
    """Fraction of the seeds both files played where the two controllers' episodes ended alike (same return
    and length): two policies that play every real episode the same way are one policy."""
    x = {r["seed"]: (r["return"], r["length"]) for r in rows(a)}
    y = {r["seed"]: (r["return"], r["length"]) for r in rows(b)}
    common = x.keys() & y.keys()
    return sum(x[k] == y[k] for k in common) / max(1, len(common))


def doom(folder: str) -> str:
    root = Path(folder)
    cells = []
    for cell in sorted(root.glob("tau-*"), key=lambda p: float(p.name[4:])):
        tau = cell.name[4:]
        real = first(cell / "eval-test" / "returns.csv", cell / "returns.csv")
        dream = first(cell / f"eval-dream-{float(tau):g}" / "returns.csv", cell / "dream_returns.csv")
        if real is not None and dream is not None:
            cells.append((tau, real, dream, cell))
    lines = ["| τ | dream score (ours) | real score (ours) | real > 750 | top action | same real episodes as | "
             "dream score (paper) | real score (paper) |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for tau, real_path, dream_path, cell in cells:
        dream, real = returns(dream_path), returns(real_path)
        paper = PAPER_DOOM.get(tau, ("not in the paper", "not in the paper"))
        top = [float(r["top_action"]) for r in rows(real_path) if r.get("top_action")]
        top_s = f"{np.mean(top):.0%}" if top else "—"
        same = sorted(((identical(real_path, other), t) for t, other, _, _ in cells if t != tau), reverse=True)
        same_s = f"τ {same[0][1]}: {same[0][0]:.0%}" if same and same[0][0] > 0 else "none"
        lines.append(f"| {tau} | {fmt(dream)} | {fmt(real)} | {(real > 750).mean():.0%} | {top_s} | {same_s} | "
                     f"{paper[0]} | {paper[1]} |")
    if (root / "random_policy.csv").exists():
        rand = returns(root / "random_policy.csv")
        lines.append(f"| random policy | — | {fmt(rand)} | {(rand > 750).mean():.0%} | — | — | — | "
                     f"{PAPER_DOOM['random'][1]} |")
    lines += ["", "Mean ± std over 100 episodes (std with ddof=0, as the paper's). Real episodes play env seeds never "
              "used in collection or training; dream episodes use a dream seed no training dream used. Top action: "
              "the share of a real episode's steps on its most common action, averaged over episodes (1.0 = a "
              "constant action). Same real episodes as: the other τ whose controller ended the most of the same "
              "seeds with the same return and length."]
    halves = [(tau, returns(cell / "float32_returns.csv"), returns(real)) for tau, real, _, cell in cells
              if (cell / "float32_returns.csv").exists()]
    if halves:
        lines += ["", "Shipped float16 V and M (the scores above) against the same controller with the float32 "
                  "V and M, 100 real episodes each:", "", "| τ | float16 | float32 | difference | its standard error |",
                  "|---|---:|---:|---:|---:|"]
        for tau, f32, f16 in halves:
            se = np.sqrt(f16.var() / len(f16) + f32.var() / len(f32))
            lines.append(f"| {tau} | {fmt(f16)} | {fmt(f32)} | {f16.mean() - f32.mean():+.0f} | {se:.0f} |")
    return "\n".join(lines)


def carracing(folder: str) -> str:
    root = Path(folder)
    lines = ["| model | episodes | ours | paper |", "|---|---:|---:|---:|"]
    for name, sub in (("full (z, h), C in the real env", "real-zh"), ("full (z, h), C in the dream", "dream-zh"),
                      ("V only (z), C in the real env", "real-z")):
        path = next((p for p in (root / sub / "eval-test" / "returns.csv", root / sub / "returns.csv") if p.exists()),
                    None)
        if path is not None:
            r = returns(path)
            label, summary = name, path.parent / "summary.json"
            if summary.exists():  # which C of the search, and how far the search had run
                s = json.loads(summary.read_text())
                # a search continued across machines (run.sh, NAME/init/) counts on from the generations before
                # the segment that C comes from (NAME/state/, the latest snapshot, knows every segment so far)
                segments = {}
                for folder in ("init", "state"):
                    path = root / sub / folder / "segments.json"
                    segments.update(json.loads(path.read_text()) if path.exists() else {})
                done = segments.get(s.get("controller_id"), 0)
                which = re.sub(r"generation (\d+)", lambda m: f"generation {int(m[1]) + done}", s.get("controller", ""))
                label += (f": {which}, after {s['generation'] + done} generations"
                          + (f" (a search continued after {done}, init/)" if done else "")) if "controller" in s else ""
            lines.append(f"| {label} | {len(r)} | {fmt(r)} | {PAPER_CARRACING[name]} |")
    if (root / "random_policy.csv").exists():
        r = returns(root / "random_policy.csv")
        lines.append(f"| brownian random policy | {len(r)} | {fmt(r)} | — |")
    lines += ["", "Mean ± std over unseen tracks (env seeds never used in collection or training)."]
    lines += _carracing_search(root)
    lines += _carracing_ablation(root)
    return "\n".join(lines)


def _carracing_search(root: Path) -> list[str]:
    """The full model's kept 100-track evaluations (eval-test*, one per C the search returned), by search length,
    each paired with the one before on the same tracks: how the real score grows with generations."""
    kept, seen = [], set()
    for g, f in sorted((g, f) for f in (root / "real-zh").glob("eval-test*") if (g := _generations(f)) is not None):
        c = json.loads((f / "summary.json").read_text()).get("controller_id"), g  # the search, and how far it ran
        if c not in seen:  # eval-test/ and a kept copy of the same C's evaluation
            seen.add(c)
            kept.append((g, f))
    if len(kept) < 2:
        return []
    lines = ["", "**The full model as its search ran** (each C the search returned, on the same 100 reference tracks):",
             "", "| generations | mean solution of generation | real | median | tracks > 800 | − the C before, per track "
             "[95 % bootstrap interval] |", "|---:|---:|---:|---:|---:|---:|"]
    for i, (g, f) in enumerate(kept):
        r = returns(f / "returns.csv")
        before = _paired(f / "returns.csv", kept[i - 1][1] / "returns.csv") if i else ""
        lines.append(f"| {g} | {_generations(f, of_c=True)} | {fmt(r)} | {np.median(r):.0f} | {(r > 800).sum()} "
                     f"| {before} |")
    return lines


def _generations(folder: Path, of_c: bool = False) -> int | None:
    """How many generations the search behind an evaluation folder had run (across init/ segments), or with
    ``of_c`` the generation of the mean solution it scored (the C a search of that length returns)."""
    summary = folder / "summary.json"
    if not summary.exists():
        return None
    s, segments = json.loads(summary.read_text()), {}
    for seg in ("init", "state"):
        path = folder.parent / seg / "segments.json"
        segments.update(json.loads(path.read_text()) if path.exists() else {})
    done = segments.get(s.get("controller_id"), 0)
    which = re.search(r"generation (\d+)", s.get("controller", ""))
    return (int(which[1]) if of_c and which else s["generation"]) + done


def _carracing_ablation(root: Path) -> list[str]:
    """V only after G generations against the full model's C of generation G (the same search budget), on the same
    tracks: the paper's check that M's h matters (906 against 632)."""
    from worldmodels.stages.study import bootstrap_ci

    z = root / "real-z" / "eval-test"
    g = _generations(z)
    full = next((f for f in sorted((root / "real-zh").glob("eval-test*")) if _generations(f, of_c=True) == g), None)
    if g is None or full is None:
        return []
    a, b = rows(full / "returns.csv"), rows(z / "returns.csv")
    if [r["seed"] for r in a] != [r["seed"] for r in b]:
        raise SystemExit(f"{full} and {z} played different tracks: no paired comparison")
    diff = returns(full / "returns.csv") - returns(z / "returns.csv")
    low, high = bootstrap_ci(diff)
    return ["", f"**At an equal search budget** ({g} generations of 64 candidates × 4 tracks each, the same 100 "
                "reference tracks):", "",
            "| | full (z, h) | V only (z) | full − V only, per track [95 % bootstrap interval] |", "|---|---:|---:|---:|",
            f"| ours, {g} generations | {fmt(returns(full / 'returns.csv'))} | {fmt(returns(z / 'returns.csv'))} "
            f"| {diff.mean():+.0f} [{low:+.0f}, {high:+.0f}] |",
            "| paper, ~1,800 generations of 64 × 16 | 906 ± 21 | 632 ± 251 | +274 |"]


# Public CarRacing results with C trained only in the dream (../shared/REFERENCE.md, "Other anchors").
ANCHORS_DREAM = (("Dropout's Dream Land (a fixed-N CarRacing, mostly expert data)", "788.6", "128"),
                 ("world-models-jax (heuristic-driver and on-policy failure data)", "843", "1 (apparently)"))


def _paired(a: Path, b: Path) -> str:
    """a − b on the tracks both played (by seed), with a 95 % bootstrap interval; '—' where either is missing."""
    from worldmodels.stages.study import bootstrap_ci

    if not (a.exists() and b.exists()):
        return "—"
    base = {r["seed"]: float(r["return"]) for r in rows(b)}
    diff = np.array([float(r["return"]) - base[r["seed"]] for r in rows(a) if r["seed"] in base])
    if not len(diff):
        return "—"
    low, high = bootstrap_ci(diff)
    return f"{diff.mean():+.0f} [{low:+.0f}, {high:+.0f}]"


def _round_of(run: Path) -> str:
    """'round K' for a run folder whose M links to iterate/round-K/mdrnn (run.sh's iterate-final/)."""
    m = run / "mdrnn"
    return m.readlink().parent.name.replace("-", " ") if m.is_symlink() else "?"


def _round_label(evaluation: Path) -> str:
    """'round K' for iterate-final/eval-test-round-K (an earlier round's C scored there; run.sh stage 6)."""
    return evaluation.name[len("eval-test-"):].replace("-", " ")


def _earlier_finals(root: Path) -> list[Path]:
    """iterate-final's evaluations of earlier rounds' Cs, on the same 100 tracks as its own, latest round first."""
    now = _round_of(root / "iterate-final")
    found = (root / "iterate-final").glob("eval-test-round-*")
    return [e for e in sorted(found, key=lambda e: -int(e.name.rsplit("-", 1)[1])) if _round_label(e) != now]


def _noisy(root: Path) -> list[tuple[str, Path, Path]]:
    """iterate-final's evaluations with action noise (evaluate --noise; run.sh stage 7), its own C's and earlier
    rounds' kept ones: (label, noisy returns, the same C's returns without noise), on the same tracks."""
    fin, found = root / "iterate-final", []
    for e in sorted((root / "iterate-final").glob("eval-test-noise*")):
        sigma, _, earlier = e.name[len("eval-test-noise"):].partition("-")
        which = earlier.replace("-", " ") if earlier else _round_of(fin)
        plain = fin / (f"eval-test-{earlier}" if earlier else "eval-test") / "returns.csv"
        found.append((f"{which}'s C with action noise {sigma}", e / "returns.csv", plain))
    return found


def carracing_dream(folder: str) -> str:
    """The rounds of `worldmodels iterate` (rounds.csv, where it ran) and the final C on 100 reference tracks (float16 V and M
    as shipped, and float32), beside the brownian random policy of results/carracing and the public anchors."""
    root = Path(folder)
    lines = []
    # the rounds as a campaign copied them, or shipped (results/ship.py iterate); a campaign without rounds has
    # only the final C
    found = [p for p in (root / "rounds.csv", root / "iterate" / "rounds.csv") if p.exists()]
    if found:
        table = rows(found[0])
        def scores(n: int) -> Path:  # round 0 is final/'s C, which the rounds start from
            return root / ("final" if n == 0 else f"iterate/round-{n}") / "eval-test" / "returns.csv"

        paired = [_paired(scores(int(r["round"])), scores(int(r["round"]) - 1)) for r in table]
        extra = any(p != "—" for p in paired)  # the rounds' per-track returns are shipped (results/ship.py iterate)
        noise = [float(r.get("param_noise") or 0) for r in table]  # rounds from before the columns: none
        penalty = [float(r.get("dream_penalty") or 0) for r in table]
        # rounds from before a column show "" (dream dropout, τ, action noise), "none", "0", "no" or "first"
        dropout = [f"{float(r['dream_dropout']):g}" if r.get("dream_dropout") else "" for r in table]
        cap = [f"{float(r['dream_return_cap']):g}" if r.get("dream_return_cap") else "none" for r in table]
        tau = [f"{float(r['temperature']):g}" if r.get("temperature") else "" for r in table]
        act = [f"{float(r['noise']):g}" if r.get("noise") else "" for r in table]
        recent = [f"{float(r['mdrnn_recent_share']):g}" if r.get("mdrnn_recent_share") else "0" for r in table]
        common = ["yes" if r.get("dream_common") == "True" else "no" for r in table]
        starts = [r.get("dream_starts") or "first" for r in table]
        noisy = [f"{float(r['real_noisy_mean']):.0f} ± {float(r['real_noisy_std']):.0f} (σ {float(r['eval_noise']):g})"
                 if r.get("real_noisy_mean") else "—" for r in table]  # iterate --eval-noise
        # (header, alignment, each round's cell, shown): a setting's column only where the rounds' values differ
        columns = [
            ("round", "---", [r["round"] for r in table], True),
            ("real frames (M's data)", "---:", [f"{int(r['real_frames']):,}" for r in table], True),
            ("V refit", "---", ["yes" if r["vae_refit"] == "True" else "no" for r in table], True),
            ("C generations", "---:", [r.get("generations") or "?" for r in table], True),
            ("action noise", "---:", [a or "?" for a in act], len(set(act)) > 1),
            ("parameter noise", "---:", [f"{n:g}" for n in noise], any(noise)),
            ("dream penalty", "---:", [f"{p:g}" for p in penalty], any(penalty)),
            ("dream τ", "---:", tau, len(set(tau)) > 1),
            ("dream dropout", "---:", dropout, len(set(dropout)) > 1),
            ("dream return cap", "---:", cap, len(set(cap)) > 1),
            ("share of M's batches from the last rounds", "---:", recent, len(set(recent)) > 1),
            ("common dreams", "---", common, len(set(common)) > 1),
            ("dream starts", "---", starts, len(set(starts)) > 1),
            ("dream", "---:", [f"{float(r['dream_score']):.0f}" for r in table], True),
            ("real (20 reference tracks)", "---:",
             [f"{float(r['real_mean']):.0f} ± {float(r['real_std']):.0f}" for r in table], True),
            ("real with action noise (same tracks)", "---:", noisy, any(n != "—" for n in noisy)),
            ("real − the round before, per track [95 % bootstrap interval]", "---:", paired, extra),
        ]
        shown = [c for c in columns if c[3]]
        lines = ["| " + " | ".join(c[0] for c in shown) + " |", "|" + "".join(c[1] + "|" for c in shown)]
        lines += ["| " + " | ".join(c[2][i] for c in shown) + " |" for i in range(len(table))]
        lines.append("")
    lines += ["| controller | episodes | real score | standard error |", "|---|---:|---:|---:|"]
    half = (root / "final_float32_returns.csv").exists()  # shipped in float16, and scored in float32 too
    finals = (("final C, shipped float16 V and M" if half else "final C, shipped V and M",
               root / "final" / "eval-test" / "returns.csv"),
              ("final C, float32 V and M", root / "final_float32_returns.csv"),
              (f"iterate-final: {_round_of(root / 'iterate-final')}'s C, its M, the kept V",
               root / "iterate-final" / "eval-test" / "returns.csv"),
              *((f"an earlier round's C ({_round_label(e)}), its M, the kept V", e / "returns.csv")
                for e in _earlier_finals(root)),
              *((f"{label} (a stochastic policy around it)", noisy) for label, noisy, _ in _noisy(root)),
              ("brownian random policy", root.parent / "carracing" / "random_policy.csv"))
    for name, path in finals:
        if path.exists():
            r = returns(path)
            lines.append(f"| {name} | {len(r)} | {fmt(r)} | {r.std() / np.sqrt(len(r)):.0f} |")
    last = root / "iterate-final" / "eval-test" / "returns.csv"
    for e in _earlier_finals(root):  # the same tracks: paired
        lines.append(f"| iterate-final − {_round_label(e)}'s, per track [95 % bootstrap interval] | | "
                     f"{_paired(last, e / 'returns.csv')} | |")
    for label, noisy, plain in _noisy(root):
        lines.append(f"| {label} − without noise, per track [95 % bootstrap interval] | | {_paired(noisy, plain)} | |")
    lines += [f"| {name} | {n} | {score} | — |" for name, score, n in ANCHORS_DREAM]
    lines += ["", "Real scores on the reference env (gymnasium CarRacing-v3), mean ± std over unseen tracks; the "
              "anchors' envs and data differ (see ../shared/REFERENCE.md)."]
    return "\n".join(lines)


def done_head(data: str) -> str:
    """M, teacher-forced on its held-out validation episodes from their first frame, against their real
    deaths: the dream ends an episode only where the done logit is > 0, so a missed death is a hit the
    dream forgives (worldmodels.stages.train_mdrnn.done_head_report)."""
    import yaml

    from worldmodels.data import open_latents
    from worldmodels.models.mdrnn import load_mdrnn
    from worldmodels.stages.train_mdrnn import done_head_report
    from worldmodels.stages.train_vae import split_episodes

    mdrnn = load_mdrnn(Path(data) / "mdrnn", "cpu").eval()
    m_cfg = yaml.safe_load((Path(data) / "mdrnn" / "config.yaml").read_text())
    with open_latents(Path(data) / "latents.h5") as f:
        _, val = split_episodes(f.n_episodes, m_cfg["val_fraction"], m_cfg["seed"])
        r = done_head_report(mdrnn, f, val)
    return (f"{r['deaths']} of M's {len(val)} validation episodes end in a death; M's done logit is > 0 at "
            f"{r['recall']:.1%} of those deaths and at {r['false_alarm']:.2%} of the other steps")


def timings(folder: str | Path) -> list[tuple[str, float]]:
    """(stage, seconds) rows of a campaign's timings.tsv (its optional header skipped)."""
    rows = []
    for line in (Path(folder) / "timings.tsv").read_text().splitlines():
        name, _, seconds = line.rpartition("\t")
        if name and seconds.strip().replace(".", "", 1).isdigit():
            rows.append((name, float(seconds)))
    return rows


def cost(folder: str, cores: int = 2) -> str:
    """Wall-clock per stage group and the campaign's core-hours: every stage used all ``cores`` cores."""
    groups: dict[str, float] = {}
    for name, seconds in timings(folder):
        key = name.split(" ")[0]  # "train-controller real-zh to 20" -> "train-controller"
        groups[key] = groups.get(key, 0.0) + seconds
    total = sum(groups.values())
    lines = ["| stage | wall-clock | core-hours |", "|---|---:|---:|"]
    lines += [f"| {k} | {v / 3600:.2f} h | {v * cores / 3600:.2f} |" for k, v in groups.items()]
    lines.append(f"| **all** | **{total / 3600:.2f} h** | **{total * cores / 3600:.2f}** |")
    return "\n".join(lines + ["", f"On {cores} CPU cores, every stage using all of them (timings.tsv)."])


def procgen_study(out: str, dest: str) -> None:
    """The study's tables (results.md, .csv, _summary.*, .png) in DEST from every finished cell under OUT, whatever
    games and seeds are done so far (``worldmodels study`` writes them only for the games it was asked), and the
    cell records in DEST/cells/ (with those already there: a new machine's OUT starts empty). Games and conditions in
    the order of DEST/study.yaml (else OUT/config.yaml)."""
    import shutil

    import yaml

    from worldmodels.stages import study

    design = Path(dest) / "study.yaml" if (Path(dest) / "study.yaml").is_file() else Path(out) / "config.yaml"
    cfg = yaml.safe_load(design.read_text()) or {}
    cfg = cfg.get("study", cfg)
    # the committed records (a fresh machine's OUT holds only this session's cells), then OUT's, which win
    records = {p.name: p for folder in (Path(dest), Path(out)) for p in sorted((folder / "cells").glob("*.json"))}
    cells = [json.loads(p.read_text()) for _, p in sorted(records.items())]
    done = {c["game"] for c in cells}
    games = [g for g in cfg.get("games", []) if g in done] + sorted(done - set(cfg.get("games", [])))
    if games:
        study.write_results(Path(dest), cells, games, cfg.get("conditions") or study.default_conditions())
    (Path(dest) / "cells").mkdir(parents=True, exist_ok=True)
    for record in (Path(out) / "cells").glob("*.json"):
        shutil.copyfile(record, Path(dest) / "cells" / record.name)


def procgen_readme(dest: str) -> str:
    """README's compact study table from DEST/results_summary.json: per game and condition, seeds, the mean over
    seeds [95 % bootstrap interval over seeds] on training and test levels, and the paired test-level difference
    against the plain dream [its interval]."""
    def span(row: dict, key: str) -> str:
        return f"{row[key + '_mean']:.2f} [{row[key + '_low']:.2f}, {row[key + '_high']:.2f}]"

    summary = json.loads((Path(dest) / "results_summary.json").read_text())
    lines = ["| game | condition | seeds | training levels | test levels | test: vs dream (paired) |",
             "|---|---|---:|---:|---:|---:|"]
    for row in summary["rows"]:
        paired = "" if row["test_vs_dream_mean"] is None else (
            f"{row['test_vs_dream_mean']:+.2f} [{row['test_vs_dream_low']:+.2f}, {row['test_vs_dream_high']:+.2f}]")
        lines.append(f"| {row['game']} | {row['condition']} | {row['seeds']} | {span(row, 'train')} | "
                     f"{span(row, 'test')} | {paired} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("random-policy", "doom", "carracing", "carracing-dream", "done-head", "cost",
                                   "procgen-study"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "random-policy":
        random_policy(*argv[1:3])
    elif argv[0] == "procgen-study":
        procgen_study(*argv[1:3])
        print(procgen_readme(argv[2]))
    elif argv[0] == "done-head":
        print(done_head(argv[1]))
    elif argv[0] == "cost":
        print(cost(argv[1], *(int(a) for a in argv[2:3])))
    else:
        print({"doom": doom, "carracing": carracing, "carracing-dream": carracing_dream}[argv[0]](argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
