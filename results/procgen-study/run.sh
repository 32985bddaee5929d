#!/usr/bin/env bash
# The ProcGen study (issue 15): worldmodels study with results/procgen-study/study.yaml, one game and seed at a time
# (the tables of every finished cell land here after each; `python results/tables.py procgen-study data/procgen-study
# results/procgen-study` brings them up to date mid-seed). The study resumes per world and per cell (cells/*.json);
# rerun this script to continue. Wall-clock per game and seed goes to timings.tsv. Coinrun's seed-0 world (V and M
# in float16, with their records, and the first frames' latents a dream starts from) ships in worlds/coinrun/, for
# notebook 04's pictures of augmented dreams (~10 MB).
#   bash results/procgen-study/run.sh   (GAMES="coinrun jumper maze bigfish", SEED_GROUPS="0,1,2 3,4" by default)
set -euo pipefail
HERE=results/procgen-study
cd "$(dirname "$0")/../.."
source scripts/venv.sh
source scripts/timed.sh
OUT=${OUT:-data/procgen-study}
keep() {  # the tables of every finished cell so far (all games), and the cell records (each cell's config and scores)
  python results/tables.py procgen-study "$OUT" "$HERE"
}
ship_world() {  # ship_world GAME: its seed-0 world, once
  local world=$OUT/$1/seed0 out=$HERE/worlds/$1
  [ -f "$world/world.json" ] && [ ! -f "$out/starts.h5" ] || return 0
  mkdir -p "$out"
  python results/ship.py slim "$world/vae" "$out/vae" --half
  python results/ship.py slim "$world/mdrnn" "$out/mdrnn" --half
  python results/ship.py starts "$world/latents.h5" "$out/starts.h5"
}
unpaid() {  # unpaid GAME: two of its seeds' plain dreams paid C (nearly) nothing, so every dream condition trains
  # C on no signal (maze, bigfish: all six dream conditions gave the same C) and more seeds would only restate it
  python - "$HERE/cells" "$1" <<'PY'
import json, sys
from pathlib import Path
fits = [json.loads(p.read_text()).get("dream_fitness") for p in Path(sys.argv[1]).glob(f"{sys.argv[2]}__seed*__dream.json")]
fits = [f for f in fits if f is not None]
sys.exit(0 if len(fits) >= 2 and max(fits) < 0.1 else 1)
PY
}
# A new machine's OUT starts empty: the committed cell records mark those cells finished (their worlds are not
# needed again), so they are not recomputed.
mkdir -p "$OUT/cells" && cp -n "$HERE"/cells/*.json "$OUT/cells/" 2>/dev/null || true
# Seeds 0-2 of every game before seeds 3-4 of any: a session that stops midway leaves four games at three seeds,
# not one game at five. A game whose dreams pay nothing (unpaid) gets no more seeds.
for seeds in ${SEED_GROUPS:-0,1,2 3,4}; do
  for game in ${GAMES:-coinrun jumper maze bigfish}; do
    for seed in ${seeds//,/ }; do
      if unpaid "$game"; then echo "[procgen-study] $game: two seeds' dreams paid nothing; no more seeds"; break; fi
      timed "study $game seed $seed" worldmodels study --config $HERE/study.yaml --out "$OUT" --games "$game" --seeds "$seed"
      keep
    done
    if [ "$game" = coinrun ]; then ship_world "$game"; fi
  done
done
keep
