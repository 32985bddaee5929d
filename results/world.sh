# Sourced by results/*/run.sh after they set HERE (the results folder), DATA, PRESET and ENV: the venv,
# `wm` (a worldmodels command with the preset and env), `timed` and the four world stages (V and M).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
mkdir -p "$DATA"
wm() { worldmodels "$@" --preset "$PRESET" --env "$ENV"; }
timed() {  # timed NAME COMMAND...: run, then append "NAME<TAB>seconds" to timings.tsv
  local name=$1 t0=$SECONDS; shift
  "$@"
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$HERE/timings.tsv"
}

timed collect wm collect --out "$DATA/rollouts.h5"
timed train-vae wm train-vae --data "$DATA/rollouts.h5" --out "$DATA/vae"
timed encode wm encode --data "$DATA/rollouts.h5" --vae "$DATA/vae" --out "$DATA/latents.h5"
timed train-mdrnn wm train-mdrnn --latents "$DATA/latents.h5" --out "$DATA/mdrnn"
