#!/usr/bin/env bash
# How alike are the two CarRacing backends (reference gymnasium vs fast envpool)? Resumable; ~30 min on 2 cores.
#
#   bash results/env-fidelity/run.sh [RUN]     RUN: a CarRacing run whose C was trained on the fast backend
#                                              (default runs/carracing-default, what ./run_pipeline.sh makes)
# For each backend: 100 brownian episodes of 1000 steps (seed 0; frame statistics, returns, V's training
# data) and 20 more (seed 1, other tracks: V's test frames); V (z 32, 1 epoch) trained on each; then
# analyse.py compares them, and C of RUN is scored on 100 tracks of each backend. Writes fidelity.md/json here.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE/../.."
source scripts/venv.sh
source scripts/timed.sh
DATA=${DATA:-data/env-fidelity}
RUN=${1:-runs/carracing-default}
mkdir -p "$DATA"
for b in reference fast; do
  timed "collect-$b" worldmodels collect --env carracing --env-backend "$b" --episodes 100 --seed 0 --workers 2 --out "$DATA/$b/train.h5"
  timed "collect-test-$b" worldmodels collect --env carracing --env-backend "$b" --episodes 20 --seed 1 --workers 2 --out "$DATA/$b/test.h5"
  timed "train-vae-$b" worldmodels train-vae --data "$DATA/$b/train.h5" --out "$DATA/$b/vae" --epochs 1 --device cpu
done
if [ -f "$RUN/controller/checkpoint.pt" ]; then
  mkdir -p "$DATA/c-run"
  for part in vae mdrnn controller; do [ -e "$DATA/c-run/$part" ] || cp -r "$RUN/$part" "$DATA/c-run/$part"; done
  for b in reference fast; do
    timed "evaluate-$b" worldmodels evaluate --run "$DATA/c-run" --env-backend "$b" --episodes 100 --workers 2 --no-gif
  done
else
  echo "no controller in $RUN: run ./run_pipeline.sh first for the controller part" >&2
fi
python "$HERE/analyse.py" "$DATA" "$HERE"
