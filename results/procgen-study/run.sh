#!/usr/bin/env bash
# The ProcGen study (issue 15): worldmodels study with results/procgen-study/study.yaml, one game and seed group at a time (a
# finished game's tables land here before the next starts; `python results/tables.py procgen-study
# data/procgen-study results/procgen-study` brings them up to date mid-game), then the whole table. The study resumes per world and
# per cell (cells/*.json); rerun this script to continue. Wall-clock per game goes to timings.tsv. The seed-0
# world of one sparse and one dense game (V and M in float16, with their records, and the first frames' latents a
# dream starts from) ships in worlds/<game>/, for notebook 04's pictures of augmented dreams (~10 MB a game).
#   bash results/procgen-study/run.sh   (GAMES="coinrun jumper maze bigfish", SEED_GROUPS="0,1,2 3,4" by default)
set -euo pipefail
HERE=results/procgen-study
cd "$(dirname "$0")/../.."
source scripts/venv.sh
OUT=${OUT:-data/procgen-study}
timed() { local name=$1 t0=$SECONDS; shift; "$@"; printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$HERE/timings.tsv"; }
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
# Seeds 0-2 of every game before seeds 3-4 of any: a session that stops midway leaves four games at three seeds,
# not one game at five.
for seeds in ${SEED_GROUPS:-0,1,2 3,4}; do
  for game in ${GAMES:-coinrun jumper maze bigfish}; do
    timed "study $game seeds $seeds" worldmodels study --config $HERE/study.yaml --out "$OUT" --games "$game" --seeds "$seeds"
    keep
    case $game in coinrun|bigfish) ship_world "$game";; esac
  done
done
worldmodels study --config $HERE/study.yaml --out "$OUT"  # every cell is done: rebuilds the whole table
keep
