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
source scripts/timed.sh
DATA=${DATA:-data/doom}
PRESET=$HERE/preset.yaml
ENV=doom-takecover
MODELS=$HERE/models
mkdir -p "$DATA" "$MODELS"
wm() { worldmodels "$@" --preset "$PRESET" --env "$ENV"; }
restore() { [ -f "$MODELS/$1/checkpoint.pt" ] && [ ! -f "$DATA/$1/checkpoint.pt" ] && mkdir -p "$DATA/$1" && cp "$MODELS/$1/checkpoint.pt" "$DATA/$1/"; true; }
is_half() { python -c "import sys, torch; sys.exit(torch.load('$1', weights_only=False).get('stored_as') != 'float16')"; }

restore vae
if [ ! -f "$MODELS/vae/checkpoint.pt" ]; then
  timed collect-v wm collect --episodes 1500 --seed 0 --out "$DATA/rollouts-v.h5"
  timed train-vae wm train-vae --data "$DATA/rollouts-v.h5" --out "$DATA/vae"
  python results/ship.py slim "$DATA/vae" "$MODELS/vae" --half
fi
restore mdrnn
if [ ! -f "$MODELS/mdrnn/checkpoint.pt" ]; then
  timed collect wm collect --episodes 10000 --seed 0 --out "$DATA/rollouts.h5"
  timed encode wm encode --data "$DATA/rollouts.h5" --vae "$DATA/vae" --out "$DATA/latents.h5"
  timed train-mdrnn wm train-mdrnn --latents "$DATA/latents.h5" --out "$DATA/mdrnn"
  python results/ship.py starts "$DATA/latents.h5" "$MODELS/starts.h5"
  python results/ship.py slim "$DATA/mdrnn" "$MODELS/mdrnn" --half
  python results/tables.py done-head "$DATA" > "$HERE/done_head.txt"
fi
for part in vae mdrnn; do  # earlier runs of this script shipped float32: ship float16 from the full checkpoints
  if [ -f "$DATA/$part/checkpoint.pt" ] && ! is_half "$DATA/$part/checkpoint.pt" && ! is_half "$MODELS/$part/checkpoint.pt"; then
    python results/ship.py slim "$DATA/$part" "$MODELS/$part" --half
  fi
done
# Each temperature: C evolved in the dream (data/doom/tau-<t>, full V and M); then results/doom/tau-<t> becomes a
# run folder of its own (the slim C beside links to the shipped float16 V and M) and is scored there, on 100 real
# episodes and 100 dreams, so `worldmodels evaluate --run results/doom/tau-<t>` reproduces its returns.csv. The
# same C with the float32 V and M is scored too (float32_returns.csv): what float16 shipping moved.
for tau in ${TAUS:-1.15 1.30 1.00 0.50 0.10}; do
  run=$DATA/tau-$tau out=$HERE/tau-$tau
  d=$(python -c "print(f'{float(\"$tau\"):g}')")
  # A shipped temperature is done: its C, real and dream scores are committed (on a fresh machine its full-size
  # C is gone, and rerunning would evolve another).
  [ -f "$out/eval-test/returns.csv" ] && [ -f "$out/eval-dream-$d/returns.csv" ] && continue
  mkdir -p "$run" "$out"
  for part in vae mdrnn; do [ -e "$run/$part" ] || ln -s "../$part" "$run/$part"; done
  timed "train-controller tau=$tau" wm train-controller --run "$run" --latents "$MODELS/starts.h5" --temperature "$tau"
  python results/ship.py slim "$run/controller" "$out/controller"
  for part in vae mdrnn; do [ -e "$out/$part" ] || ln -s "../models/$part" "$out/$part"; done
  timed "evaluate-real tau=$tau" wm evaluate --run "$out" --episodes 100
  timed "evaluate-dream tau=$tau" wm evaluate --run "$out" --where dream --episodes 100 --latents "$MODELS/starts.h5"
  rm -f "$out/eval-test/episode.gif" "$out/eval-dream-$d/episode.gif"  # MBs each; evaluate --run remakes them
  if ! is_half "$DATA/vae/checkpoint.pt" && ! is_half "$DATA/mdrnn/checkpoint.pt"; then  # not restored from float16
    timed "evaluate-real-float32 tau=$tau" wm evaluate --run "$run" --episodes 100 --no-gif
    cp "$run/eval-test/returns.csv" "$out/float32_returns.csv"
  fi
done
[ -f "$HERE/random_policy.csv" ] || timed random-policy wm collect --policy random --episodes 100 --seed 1 --out "$DATA/random.h5"
[ -f "$HERE/random_policy.csv" ] || python results/tables.py random-policy "$DATA/random.h5" "$HERE/random_policy.csv"
python results/tables.py doom "$HERE" > "$HERE/results.md"
