#!/usr/bin/env bash
# CarRacing-v3: the full model (z, h) with C evolved in the real env (the paper's way) and in M's dream
# (M's reward head), and the V-only ablation (z) in the real env; each scored on 100 unseen tracks.
# Every stage resumes when rerun; wall-clock per stage goes to timings.tsv.
#   bash results/carracing-cpu/run.sh [DATA_DIR]   (default data/carracing-cpu; results land beside this script)
set -euo pipefail
HERE=results/carracing-cpu
DATA=${1:-data/carracing-cpu}
PRESET=$HERE/preset.yaml
ENV=carracing
source "$(dirname "$0")/../world.sh"
controller() {  # controller NAME TRAIN-CONTROLLER-OPTIONS...: evolve, evaluate, copy the small results
  local name=$1 run=$DATA/$1; shift
  mkdir -p "$run" "$HERE/$name"
  for part in vae mdrnn; do [ -e "$run/$part" ] || ln -s "../$part" "$run/$part"; done
  timed "train-controller $name" wm train-controller --run "$run" --latents "$DATA/latents.h5" "$@"
  timed "evaluate $name" wm evaluate --run "$run"
  cp "$run"/controller/{metrics.jsonl,learning_curve.png,config.yaml} "$HERE/$name/"
  cp "$run"/eval-test/{returns.csv,summary.json} "$HERE/$name/"  # episode.gif (MBs) stays in $run
}
controller real-zh --where real --obs-mode zh
controller dream-zh --where dream --obs-mode zh --popsize 32 --rollouts 8 --generations 60 --max-steps 500 --eval-episodes 32
controller real-z --where real --obs-mode z
python "results/tables.py" carracing "$HERE" > "$HERE/results.md"
