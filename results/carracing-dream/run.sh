#!/usr/bin/env bash
# CarRacing from the dream (issue 15): C's fitness is computed only in M's dream; real frames only feed V and M.
#  1. the world: results/carracing's brownian collection (2,000 episodes, the same seed, so the same file) and
#     its V; M trained with dropout on it (a dream ensemble by dropout masks);
#  2. C0 evolved in the dream (tau 1.15, dream dropout 0.1);
#  3. fidelity on train-purpose tracks picks tau and the dream dropout (highest Spearman of dream vs real over
#     C0 and its perturbations); C is evolved again with them if they differ;
#  4. iterate: ROUNDS rounds of 200 on-policy episodes, M refit, C continued in the new dream;
#  5. the last round's C on 100 reference-env tracks, shipped as results/carracing-dream/final (V, M, C).
# Every stage resumes when rerun; wall-clock per stage goes to timings.tsv.
#   bash results/carracing-dream/run.sh   (ROUNDS=8, GENERATIONS=100)
set -euo pipefail
HERE=results/carracing-dream
cd "$(dirname "$0")/../.."
source scripts/venv.sh
source scripts/timed.sh
CAR=${CAR:-data/carracing}          # results/carracing's data folder: its rollouts, latents and V
DATA=${DATA:-data/carracing-dream}
PRESET=$HERE/preset.yaml
mkdir -p "$DATA" "$HERE/models"
wm() { worldmodels "$@" --preset "$PRESET" --env carracing; }

# 1. The world. V is results/carracing's (shipped); the collection is replayed if this machine lacks it.
[ -f results/carracing/models/vae/checkpoint.pt ] || { echo "run results/carracing/run.sh first (its V)" >&2; exit 1; }
[ -f "$CAR/vae/checkpoint.pt" ] || { mkdir -p "$CAR/vae"; cp results/carracing/models/vae/checkpoint.pt "$CAR/vae/"; }
# collect and encode resume, and do nothing when their file is complete.
timed collect worldmodels collect --preset results/carracing/preset.yaml --env carracing --episodes 2000 --seed 0 --out "$CAR/rollouts.h5"
timed encode wm encode --data "$CAR/rollouts.h5" --vae "$CAR/vae" --out "$CAR/latents.h5"
# M is shipped in float32 (1.7 MB), so a later session resumes C against exactly the M it was evolved in.
if [ -f "$HERE/models/mdrnn/checkpoint.pt" ] && [ ! -f "$DATA/mdrnn/checkpoint.pt" ]; then
  mkdir -p "$DATA/mdrnn" && cp "$HERE/models/mdrnn/checkpoint.pt" "$DATA/mdrnn/"
fi
if [ ! -f "$HERE/models/mdrnn/checkpoint.pt" ]; then
  timed train-mdrnn wm train-mdrnn --latents "$CAR/latents.h5" --out "$DATA/mdrnn" --vae "$CAR/vae"
  python results/ship.py slim "$DATA/mdrnn" "$HERE/models/mdrnn"
fi
link_world() { mkdir -p "$1"; [ -e "$1/vae" ] || ln -s "$(realpath "$CAR/vae")" "$1/vae"
               [ -e "$1/mdrnn" ] || ln -s "$(realpath "$DATA/mdrnn")" "$1/mdrnn"; }
G=${GENERATIONS:-100}

# 2-3. C0 in the dream at the preset's tau and dream dropout, then fidelity on train-purpose tracks over C0 and
# its perturbations; the best setting by Spearman (ties: the smaller dream - real gap) goes to choice.txt.
if [ ! -f "$HERE/choice.txt" ]; then
  link_world "$DATA/run"
  timed "train-controller C0" wm train-controller --run "$DATA/run" --latents "$CAR/latents.h5" --generations "$G"
  timed fidelity wm fidelity --run "$DATA/run" --temperatures 1.0,1.15,1.3 --dream-dropout 0,0.1,0.2
  cp "$DATA"/run/fidelity/{summary.json,fidelity.csv,scatter.png} "$HERE/"
  python results/fidelity_choice.py "$DATA/run/fidelity/summary.json" > "$HERE/choice.txt"
fi
read -r TAU DROP < "$HERE/choice.txt"
echo "fidelity chose tau $TAU, dream dropout $DROP"
RUN=$DATA/run
if [ "$TAU" != "1.15" ] || [ "$DROP" != "0.1" ]; then  # C evolved afresh with the chosen setting
  RUN=$DATA/run-tau$TAU-dropout$DROP
  link_world "$RUN"
  timed "train-controller (chosen)" wm train-controller --run "$RUN" --latents "$CAR/latents.h5" --generations "$G" \
    --temperature "$TAU" --dream-dropout "$DROP"
fi

# 4. Iterative training.
timed iterate wm iterate --run "$RUN" --rounds "${ROUNDS:-8}"
cp "$RUN"/iterate/rounds.{csv,json} "$HERE/"

# 5. The last round's C, shipped with its V and M in float16 as results/carracing-dream/final, scored there on
# 100 reference tracks (so `worldmodels evaluate --run results/carracing-dream/final` reproduces it); the same
# C with the float32 V and M is scored too, which measures what float16 shipping moved.
LAST=$(ls -d "$RUN"/iterate/round-* | sort -t- -k2 -n | tail -1)
OUT=$HERE/final
scored() {  # scored SUMMARY CONTROLLER_DIR: that summary.json is of that controller, over the 100 tracks
  python -c 'import json, sys; from worldmodels.checkpoint import load_checkpoint as c; s = json.load(open(sys.argv[1]))
sys.exit(s["controller_id"] != c(sys.argv[2])["id"] or s["episodes"] < 100)' "$@" 2>/dev/null
}
# Done once per last round: a finished evaluation is not resumed but played again, so a rerun skips it.
if ! scored "$OUT/eval-test/summary.json" "$LAST/controller"; then
  mkdir -p "$OUT"
  python results/ship.py slim "$LAST/vae" "$OUT/vae" --half
  python results/ship.py slim "$LAST/mdrnn" "$OUT/mdrnn" --half
  python results/ship.py slim "$LAST/controller" "$OUT/controller"
  timed "evaluate final (float16 V and M)" wm evaluate --run "$OUT"
fi
if ! scored "$LAST/eval-test/summary.json" "$LAST/controller"; then  # not the round's 20-track score
  timed "evaluate final (float32 V and M)" wm evaluate --run "$LAST"
fi
cp "$LAST"/eval-test/returns.csv "$HERE/final_float32_returns.csv"
worldmodels report --run "$OUT"  # final/report.md: the shipped models' figures and the evaluation
python results/tables.py carracing-dream "$HERE" > "$HERE/results.md"
