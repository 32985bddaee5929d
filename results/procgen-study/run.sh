#!/usr/bin/env bash
# The ProcGen study (issue 15): worldmodels study with results/procgen-study/study.yaml, one game at a time (a
# finished game's tables land here before the next starts), then the whole table. The study resumes per world and
# per cell (cells/*.json); rerun this script to continue. Wall-clock per game goes to timings.tsv.
#   bash results/procgen-study/run.sh            (GAMES="coinrun jumper maze bigfish" by default)
set -euo pipefail
HERE=results/procgen-study
cd "$(dirname "$0")/../.."
source scripts/venv.sh
OUT=${OUT:-data/procgen-study}
timed() { local name=$1 t0=$SECONDS; shift; "$@"; printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$HERE/timings.tsv"; }
keep() {  # the small result files of the study folder, and the cell records (each cell's config and scores)
  mkdir -p "$HERE/cells"
  cp "$OUT"/results{.csv,.md,.png,_summary.csv,_summary.json} "$HERE/" 2>/dev/null || true
  cp "$OUT"/cells/*.json "$HERE/cells/"
}
for game in ${GAMES:-coinrun jumper maze bigfish}; do
  timed "study $game" worldmodels study --config $HERE/study.yaml --out "$OUT" --games "$game"
  keep
done
worldmodels study --config $HERE/study.yaml --out "$OUT"  # every cell is done: rebuilds the whole table
keep
