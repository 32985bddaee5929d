#!/usr/bin/env bash
# DoomTakeCover, trained entirely in the dream at five temperatures, then scored in the dream and in the
# real game (100 episodes each). Every stage resumes when rerun; wall-clock per stage goes to timings.tsv.
#   bash results/doom-cpu/run.sh [DATA_DIR]        (default data/doom-cpu; results land beside this script)
#   TAUS="1.50 2.00" bash results/doom-cpu/run.sh  (other temperatures, on the same V and M)
set -euo pipefail
HERE=results/doom-cpu
DATA=${1:-data/doom-cpu}
PRESET=$HERE/preset.yaml
ENV=doom-takecover
source "$(dirname "$0")/../world.sh"
for tau in ${TAUS:-0.10 0.50 1.00 1.15 1.30}; do
  run=$DATA/tau-$tau
  mkdir -p "$run"
  for part in vae mdrnn; do [ -e "$run/$part" ] || ln -s "../$part" "$run/$part"; done
  timed "train-controller tau=$tau" wm train-controller --run "$run" --latents "$DATA/latents.h5" --temperature "$tau"
  timed "evaluate-dream tau=$tau" wm evaluate --run "$run" --where dream --episodes 100
  timed "evaluate-real tau=$tau" wm evaluate --run "$run" --episodes 100
  mkdir -p "$HERE/tau-$tau"
  cp "$run"/controller/{metrics.jsonl,learning_curve.png,config.yaml} "$HERE/tau-$tau/"
  cp "$run"/eval-test/{returns.csv,summary.json} "$HERE/tau-$tau/"  # episode.gif (MBs) stays in $run
  cp "$run/eval-dream-$(python -c "print(f'{float(\"$tau\"):g}')")/returns.csv" "$HERE/tau-$tau/dream_returns.csv"
  cp "$run/eval-dream-$(python -c "print(f'{float(\"$tau\"):g}')")/summary.json" "$HERE/tau-$tau/dream_summary.json"
done
# The random policy (uniform action every step) for 100 real episodes; Doom's reward is +1 per tic alive.
[ -f "$HERE/random_policy.csv" ] || timed "random-policy" wm collect --policy random --episodes 100 --seed 1 --out "$DATA/random.h5"
[ -f "$HERE/random_policy.csv" ] || python $HERE/../tables.py random-policy "$DATA/random.h5" "$HERE/random_policy.csv"
python $HERE/../tables.py doom "$HERE" > "$HERE/results.md"
python $HERE/../tables.py done-head "$DATA" > "$HERE/done_head.txt"
