#!/usr/bin/env bash
# CarRacing-v3 (issue 14): V z 32 and M h 256 on whole episodes, C evolved in the real env (the paper's way) on
# the fast backend at the paper's population, the full model (z, h) and the V-only ablation (z), each scored on
# 100 reference-env tracks. A campaign over several sessions: every stage resumes when rerun; V, M (slim
# checkpoints) land in results/carracing/models/ as they finish, so a later session on a fresh machine skips
# them; each controller's record (config, metrics, learning curve) lands in results/carracing/<name>/search/
# after every GENS_STEP generations, and once scored, the C itself (a run folder: slim C, links to the shipped V
# and M, eval-test/, report.md), so every shipped C carries its evaluation (tests/test_shipped.py).
#   bash results/carracing/run.sh   (DATA=data/carracing; GENERATIONS=200 for the full model, GENERATIONS_Z=100)
set -euo pipefail
HERE=results/carracing
cd "$(dirname "$0")/../.."
source scripts/venv.sh
source scripts/timed.sh
DATA=${DATA:-data/carracing}
PRESET=$HERE/preset.yaml
ENV=carracing
MODELS=$HERE/models
mkdir -p "$DATA" "$MODELS"
wm() { worldmodels "$@" --preset "$PRESET" --env "$ENV"; }
restore() { [ -f "$MODELS/$1/checkpoint.pt" ] && [ ! -f "$DATA/$1/checkpoint.pt" ] && mkdir -p "$DATA/$1" && cp "$MODELS/$1/checkpoint.pt" "$DATA/$1/"; true; }
progress() {  # progress NAME: the search's record so far, in NAME/search/ (a C ships only with its evaluation,
  # and controller/ keeps the record of the C shipped there), and its state, NAME/state/, which a fresh machine
  # continues from (a commit of results/ carries the search to the next session)
  mkdir -p "$HERE/$1/search"
  cp "$DATA/$1"/controller/{config.yaml,metrics.jsonl,learning_curve.png} "$HERE/$1/search/" 2>/dev/null || true
  python results/ship.py snapshot "$DATA/$1/controller" "$HERE/$1/init" "$HERE/$1/state"
}
ship() {  # ship NAME: the slim C, its record, evaluation and report into $HERE/NAME, a run folder beside links to V and M
  local run=$DATA/$1 out=$HERE/$1
  mkdir -p "$out/eval-test"
  python results/ship.py slim "$run/controller" "$out/controller"
  for part in vae mdrnn; do [ -e "$out/$part" ] || ln -s "../models/$part" "$out/$part"; done
  cp "$run"/eval-test/{returns.csv,summary.json} "$out/eval-test/"
  rm -rf "$out/search"  # the shipped C's record is the search's
  worldmodels report --run "$out"
}

# The same seed for both files: the V file is the first 500 episodes of the M file (same tracks, same driving).
restore vae
if [ ! -f "$MODELS/vae/checkpoint.pt" ]; then
  timed collect-v wm collect --episodes 500 --seed 0 --out "$DATA/rollouts-v.h5"
  timed train-vae wm train-vae --data "$DATA/rollouts-v.h5" --out "$DATA/vae"
  python results/ship.py slim "$DATA/vae" "$MODELS/vae"
fi
restore mdrnn
if [ ! -f "$MODELS/mdrnn/checkpoint.pt" ]; then
  timed collect wm collect --episodes 2000 --seed 0 --out "$DATA/rollouts.h5"
  timed encode wm encode --data "$DATA/rollouts.h5" --vae "$DATA/vae" --out "$DATA/latents.h5"
  timed train-mdrnn wm train-mdrnn --latents "$DATA/latents.h5" --out "$DATA/mdrnn"
  python results/ship.py slim "$DATA/mdrnn" "$MODELS/mdrnn"
fi
[ -f "$HERE/random_policy.csv" ] || timed random-policy wm collect --policy brownian --episodes 100 --seed 1 --env-backend reference --out "$DATA/random.h5"
[ -f "$HERE/random_policy.csv" ] || python results/tables.py random-policy "$DATA/random.h5" "$HERE/random_policy.csv"

# C grows GENS_STEP generations at a time and is shipped after each step, so a session's stop loses at most one
# step's tail (train-controller itself resumes at the last finished generation).
controller() {  # controller NAME GENERATIONS OPTIONS...
  local name=$1 total=$2 run=$DATA/$1; shift 2
  [ "$total" -gt 0 ] || return 0
  mkdir -p "$run"
  for part in vae mdrnn; do [ -e "$run/$part" ] || ln -s "../$part" "$run/$part"; done
  # A search continues across machines from NAME/init/ (results/ship.py snapshot: CMA-ES's mean and step size,
  # counted on from its generations; NAME/init/README.md says what a restart loses). On a machine without the
  # search's checkpoint, the latest state (NAME/state/, written every GENS_STEP generations) becomes init/.
  # Every call passes the same --init and --sigma0 (a resume checks them).
  local state=$HERE/$name/state
  if [ ! -f "$run/controller/checkpoint.pt" ] && [ -f "$state/generations" ] &&
     [ "$(cat "$state/generations")" -gt "$(cat "$HERE/$name/init/generations" 2>/dev/null || echo 0)" ]; then
    mkdir -p "$HERE/$name/init" && cp "$state"/{checkpoint.pt,sigma,generations,segments.json,metrics.jsonl} "$HERE/$name/init/"
    rm -rf "$state" "$run/controller"  # a controller/ without a checkpoint holds only a torn start's files
  fi
  local done=0 init=()
  if [ -f "$HERE/$name/init/checkpoint.pt" ]; then
    done=$(cat "$HERE/$name/init/generations")
    init=(--init "$HERE/$name/init" --sigma0 "$(cat "$HERE/$name/init/sigma")")
  fi
  local g=$done
  while [ $g -lt "$total" ]; do
    g=$((g + ${GENS_STEP:-10})); [ $g -gt "$total" ] && g=$total
    timed "train-controller $name to $g" wm train-controller --run "$run" --generations $((g - done)) "${init[@]}" "$@"
    progress "$name"
  done
  # resumes a killed evaluation; a finished one of this very C is not played again
  python results/ship.py scored "$run" || timed "evaluate $name" wm evaluate --run "$run"
  ship "$name"
}
controller real-zh "${GENERATIONS:-200}" --obs-mode zh
controller real-z "${GENERATIONS_Z:-100}" --obs-mode z
python results/tables.py carracing "$HERE" > "$HERE/results.md"
