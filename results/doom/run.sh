#!/usr/bin/env bash
# DoomTakeCover (issue 14): V z 64 and M h 512 trained from episode starts, C evolved only in the dream at five
# temperatures, each scored on 100 dreams and 100 real episodes. A campaign over several sessions: every
# stage resumes when rerun, and V, M (slim checkpoints) and the dream's start latents are copied into
# results/doom/models/ as they finish, so a later session on a fresh machine skips what is done; each
# temperature's C lands in results/doom/tau-<t>/ as a run folder beside links to those V and M.
#   bash results/doom/run.sh            (DATA=data/doom by default; TAUS="..." for other temperatures)
set -euo pipefail
HERE=results/doom
cd "$(dirname "$0")/../.."
source scripts/venv.sh
DATA=${DATA:-data/doom}
PRESET=$HERE/preset.yaml
ENV=doom-takecover
MODELS=$HERE/models
mkdir -p "$DATA" "$MODELS"
wm() { worldmodels "$@" --preset "$PRESET" --env "$ENV"; }
timed() { local name=$1 t0=$SECONDS; shift; "$@"; printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$HERE/timings.tsv"; }
restore() { [ -f "$MODELS/$1/checkpoint.pt" ] && [ ! -f "$DATA/$1/checkpoint.pt" ] && mkdir -p "$DATA/$1" && cp "$MODELS/$1/checkpoint.pt" "$DATA/$1/"; true; }

restore vae
if [ ! -f "$MODELS/vae/checkpoint.pt" ]; then
  timed collect-v wm collect --episodes 1500 --seed 0 --out "$DATA/rollouts-v.h5"
  timed train-vae wm train-vae --data "$DATA/rollouts-v.h5" --out "$DATA/vae"
  python $HERE/../ship.py slim "$DATA/vae" "$MODELS/vae"
fi
restore mdrnn
if [ ! -f "$MODELS/mdrnn/checkpoint.pt" ]; then
  timed collect wm collect --episodes 10000 --seed 0 --out "$DATA/rollouts.h5"
  timed encode wm encode --data "$DATA/rollouts.h5" --vae "$DATA/vae" --out "$DATA/latents.h5"
  timed train-mdrnn wm train-mdrnn --latents "$DATA/latents.h5" --out "$DATA/mdrnn"
  python $HERE/../ship.py starts "$DATA/latents.h5" "$MODELS/starts.h5"
  python $HERE/../ship.py slim "$DATA/mdrnn" "$MODELS/mdrnn"
  python $HERE/../tables.py done-head "$DATA" > "$HERE/done_head.txt"
fi
for tau in ${TAUS:-1.15 1.30 1.00 0.50 0.10}; do
  run=$DATA/tau-$tau
  mkdir -p "$run" "$HERE/tau-$tau"
  for part in vae mdrnn; do [ -e "$run/$part" ] || ln -s "../$part" "$run/$part"; done
  timed "train-controller tau=$tau" wm train-controller --run "$run" --latents "$MODELS/starts.h5" --temperature "$tau"
  timed "evaluate-dream tau=$tau" wm evaluate --run "$run" --where dream --episodes 100
  timed "evaluate-real tau=$tau" wm evaluate --run "$run" --episodes 100
  # $HERE/tau-$tau is itself a run folder: the slim C beside links to the shipped V and M, and its real
  # evaluation, so `worldmodels evaluate --run results/doom/tau-$tau` reproduces eval-test/returns.csv.
  python $HERE/../ship.py slim "$run/controller" "$HERE/tau-$tau/controller"
  for part in vae mdrnn; do [ -e "$HERE/tau-$tau/$part" ] || ln -s "../models/$part" "$HERE/tau-$tau/$part"; done
  mkdir -p "$HERE/tau-$tau/eval-test"
  cp "$run"/eval-test/{returns.csv,summary.json} "$HERE/tau-$tau/eval-test/"
  cp "$run"/controller/{metrics.jsonl,learning_curve.png,config.yaml} "$HERE/tau-$tau/"
  cp "$run"/eval-test/{returns.csv,summary.json} "$HERE/tau-$tau/"
  d=$(python -c "print(f'{float(\"$tau\"):g}')")
  cp "$run/eval-dream-$d/returns.csv" "$HERE/tau-$tau/dream_returns.csv"
  cp "$run/eval-dream-$d/summary.json" "$HERE/tau-$tau/dream_summary.json"
done
[ -f "$HERE/random_policy.csv" ] || timed random-policy wm collect --policy random --episodes 100 --seed 1 --out "$DATA/random.h5"
[ -f "$HERE/random_policy.csv" ] || python $HERE/../tables.py random-policy "$DATA/random.h5" "$HERE/random_policy.csv"
python $HERE/../tables.py doom "$HERE" > "$HERE/results.md"
