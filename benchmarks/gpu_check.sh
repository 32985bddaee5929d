#!/usr/bin/env bash
# One GPU session's checks and figures, run from the repository root:
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine (about 3-8 minutes on an H200)
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh    # a CPU dry run of the same script (a few minutes)
#
# The GPU machine has python3 with torch, numpy 2, h5py, matplotlib, imageio, tqdm and pyyaml, and no
# network: gymnasium, cma and pytest come from .gpu_wheels/ (ignored by git; fill it with
# `bash scripts/gpu_wheels.sh` and carry it along). No real env is stepped: a synthetic CarRacing-shaped
# rollouts file is written first (or reused: ROLLOUTS=path).
#
# Sections (each timed; a failing section is reported and the next one still runs):
#   env          versions, the GPU, imports
#   data         the synthetic rollouts file
#   train-vae, encode, train-mdrnn, train-controller (--where dream), evaluate (--where dream),
#   dream-stage  (the dream GIF with all three augmentations): the pipeline on --device $DEVICE
#   bench-dream  batched vs naive dream at B = 1,024 and 16,384; one paper-size generation (64 x 16 x 1000)
#   bench-train  V img/s (fp32, channels-last, bf16 autocast, both) and M sequences/s
#   test-cuda    tests/test_cuda.py
# then a summary: PASS/FAIL and seconds per section, and every FIGURE line.
#
# Settings (environment): DEVICE (cuda), QUICK (0; 1 = tiny sizes), PYTHON (python3), WORK (runs/gpu_check),
# ROLLOUTS ($WORK/rollouts.h5), SECTIONS (all; e.g. "env data train-vae"). With $OUT set (the GPU
# machine's folder that comes back), the full log and the summary are also written there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
WORK=${WORK:-runs/gpu_check}
ROLLOUTS=${ROLLOUTS:-$WORK/rollouts.h5}
RUN=$WORK/run
SECTIONS=${SECTIONS:-all}
export PYTHONPATH="$PWD/.gpu_wheels:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TQDM_DISABLE=1            # no progress bars in the logs (tqdm >= 4.66 reads TQDM_* settings)
export PYTHONUNBUFFERED=1
export MPLBACKEND=Agg
if ! $PY -c "import typing_extensions" 2>/dev/null; then
    export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_wheels/fallback"
fi

mkdir -p "$WORK"
LOGDIR=$WORK/logs
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"
ALL_LOG=$WORK/gpu_check.log
: >"$ALL_LOG"

if [[ "$QUICK" == 1 ]]; then
    EPISODES=6 EP_LEN=60
    VAE_ARGS=(--epochs 1 --batch-size 32 --z-dim 32 --val-fraction 0.2 --shuffle-buffer 256)
    ENC_ARGS=(--batch-size 128)
    MDRNN_ARGS=(--hidden 32 --n-gaussians 3 --seq-len 16 --batch-size 4 --steps 4 --eval-every 2 --val-batches 1
                --picture-steps 8)
    CTRL_ARGS=(--popsize 4 --rollouts 2 --generations 2 --max-steps 20 --eval-every 1 --eval-episodes 4)
    EVAL_ARGS=(--episodes 8 --max-steps 20)
    DREAM_ARGS=(--steps 8 --members 2)
    BENCH_DREAM=(--batch 256 1024 --steps 3 --naive-sweeps 1 --naive-members 16 --generation --generation-steps 5)
    BENCH_TRAIN=(--vae-batch 16 --vae-steps 2 --warmup 1 --mdrnn-batch 4 --seq-len 50 --mdrnn-steps 2)
else
    EPISODES=24 EP_LEN=250
    VAE_ARGS=(--epochs 2 --batch-size 100 --z-dim 32 --val-fraction 0.1)
    ENC_ARGS=(--batch-size 1000)
    MDRNN_ARGS=(--hidden 256 --n-gaussians 5 --seq-len 100 --batch-size 32 --steps 200 --eval-every 100
                --val-batches 2 --picture-steps 32)
    CTRL_ARGS=(--popsize 16 --rollouts 8 --generations 3 --max-steps 200 --eval-every 1 --eval-episodes 32)
    EVAL_ARGS=(--episodes 256 --max-steps 200)
    DREAM_ARGS=(--steps 30 --members 4)
    BENCH_DREAM=(--batch 1024 16384 --steps 50 --naive-sweeps 2 --naive-members 2048 --generation)
    BENCH_TRAIN=(--vae-batch 100 --vae-steps 50 --mdrnn-batch 100 --seq-len 999 --mdrnn-steps 10)
fi

wm() { $PY -m worldmodels "$@"; }

# ------------------------------------------------------------------------------------------- sections
sec_env() {
    echo "DEVICE=$DEVICE QUICK=$QUICK PYTHON=$PY ($($PY --version 2>&1)) cwd=$PWD"
    $PY - "$DEVICE" <<'EOF'
import sys, torch, numpy, h5py
print(f"torch {torch.__version__}, numpy {numpy.__version__}, h5py {h5py.__version__}, "
      f"cuda available {torch.cuda.is_available()}, torch CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 supported {torch.cuda.is_bf16_supported()}")
import gymnasium, cma
try:
    import pytest
    has_pytest = pytest.__version__
except ImportError:
    has_pytest = "missing (tests/test_cuda.py runs with its own runner)"
print(f"gymnasium {gymnasium.__version__}, cma {cma.__version__}, pytest {has_pytest}")
import worldmodels.dream, worldmodels.stages.train_controller, worldmodels.stages.evaluate, worldmodels.plots
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"DEVICE={sys.argv[1]} but torch sees no CUDA GPU")
EOF
}

sec_data() {
    if [[ -f "$ROLLOUTS" ]]; then
        echo "reusing $ROLLOUTS"
    fi
    $PY - "$ROLLOUTS" "$EPISODES" "$EP_LEN" <<'EOF'
"""A synthetic CarRacing-shaped rollouts file: no env is stepped (the GPU machine has none).

Frames: grass, a grey road that bends with the steering, red car, noisy tiles; actions a Brownian
policy in CarRacing's Box(3) ([-1, 0, 0] .. [1, 1, 1]); reward -0.1 per frame and +3.2 on some frames
(a tile); episodes end truncated. Attributes as `worldmodels collect --env carracing` writes them.
"""
import sys
from pathlib import Path

import numpy as np

from worldmodels.data import ROLLOUTS, EpisodeWriter, open_rollouts

path, episodes, length = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if path.exists():
    with open_rollouts(path) as f:
        ok = f.attrs["env"] == "carracing" and f.n_episodes >= episodes
        print(f"{path}: {f.n_episodes} episodes, {f.n_frames} frames, env {f.attrs['env']}")
    if ok:
        sys.exit(0)
    path.unlink()
space = {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}  # describe_action_space(CarRacing)
attrs = {"env": "carracing", "env_kwargs": {}, "action_space": space, "policy": "brownian", "seed": 0,
         "max_steps": length}
rng = np.random.default_rng(0)
cols = np.arange(64)
path.parent.mkdir(parents=True, exist_ok=True)
with EpisodeWriter(path, ROLLOUTS, attrs) as writer:
    for e in range(episodes):
        a = np.zeros((length, 3), np.float32)
        x = np.zeros(3)
        for t in range(length):
            x = np.clip(x + rng.normal(0, 0.2, 3), [-1, 0, 0], [1, 1, 1])
            a[t] = x
        frames = np.empty((length, 64, 64, 3), np.uint8)
        frames[:] = (102, 204, 102)  # grass
        centre = 32 + np.cumsum(a[:, 0]) % 20 - 10
        for t in range(length):
            rows = np.arange(64)
            c = (centre[t] + (64 - rows) * 0.2 * a[t, 0]).astype(int)
            road = np.abs(cols[None, :] - c[:, None]) < 10
            frames[t][road] = (105, 105, 105)
            frames[t, 50:58, 29:35] = (204, 0, 0)  # the car
            frames[t, 58:64] = rng.integers(0, 60, (6, 64, 3), dtype=np.uint8)  # the dashboard
        reward = np.full(length, -0.1, np.float32)
        reward[rng.random(length) < 0.1] += 3.2
        truncated = np.zeros(length, bool)
        truncated[-1] = True
        writer.append({"obs": frames, "action": a, "reward": reward, "terminated": np.zeros(length, bool),
                       "truncated": truncated}, seed=e)
    print(f"{path}: wrote {writer.n_episodes} episodes, {writer.n_frames} frames")
EOF
}

sec_train_vae() {
    rm -rf "$RUN"  # a fresh run folder: every later stage works on this run's models
    wm train-vae --data "$ROLLOUTS" --out "$RUN/vae" --device "$DEVICE" --fresh "${VAE_ARGS[@]}"
    $PY - "$RUN/vae/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = rows[-1]
print(f"FIGURE train-vae stage: {r['vae/images_per_s']:,.0f} img/s (epoch {len(rows)}, loss {r['vae/loss']:.1f}, "
      f"val loss {r.get('val/vae/loss', float('nan')):.1f})")
EOF
}

sec_encode() {
    rm -f "$RUN/latents.h5"
    wm encode --data "$ROLLOUTS" --vae "$RUN/vae" --out "$RUN/latents.h5" --device "$DEVICE" "${ENC_ARGS[@]}"
}

sec_train_mdrnn() {
    wm train-mdrnn --latents "$RUN/latents.h5" --out "$RUN/mdrnn" --device "$DEVICE" --fresh "${MDRNN_ARGS[@]}"
    $PY - "$RUN/mdrnn/metrics.jsonl" <<'EOF'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][-1]
print(f"FIGURE train-mdrnn stage: {r['mdrnn/sequences_per_s']:,.1f} sequences/s (step {r['step']}, "
      f"nll {r['mdrnn/nll']:.3f}, val nll {r.get('val/mdrnn/nll', float('nan')):.3f})")
EOF
    test -s "$RUN/mdrnn/dream_vs_real.png"
}

sec_train_controller() {
    wm train-controller --run "$RUN" --where dream --device "$DEVICE" --fresh "${CTRL_ARGS[@]}"
    $PY - "$RUN/controller/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
s = sum(r["cmaes/seconds"] for r in rows) / len(rows)
print(f"FIGURE train-controller dream: {s:.2f} s per generation (mean of {len(rows)}; "
      f"last best {rows[-1]['cmaes/best']:.2f})")
EOF
}

sec_evaluate() {
    # evaluate has no --device: --where dream runs on pick_device("auto"), i.e. cuda when there is a GPU
    wm evaluate --run "$RUN" --where dream "${EVAL_ARGS[@]}"
    test -s "$RUN"/eval-dream-*/summary.json
}

sec_dream_stage() {
    wm dream --run "$RUN" --device "$DEVICE" --out "$RUN/dream.gif" "${DREAM_ARGS[@]}" \
        --augment random_swing,deepdream,value_diversification \
        --augment-options '{random_swing: {probability: 1, window: 5}, deepdream: {probability: 1, window: 5},
                            value_diversification: {probability: 1, window: 5}}'
    test -s "$RUN/dream.gif" && test -s "$RUN/dream.png"
}

sec_bench_dream() {
    $PY benchmarks/dream.py --device "$DEVICE" "${BENCH_DREAM[@]}"
}

sec_bench_train() {
    $PY benchmarks/train_throughput.py --device "$DEVICE" "${BENCH_TRAIN[@]}"
}

sec_test_cuda() {
    [[ "$DEVICE" == cuda* ]] || export WM_TEST_DEVICE="$DEVICE"  # CPU dry run: the tests run CPU against CPU
    if $PY -c "import pytest" 2>/dev/null; then
        $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
    else
        $PY tests/test_cuda.py  # its own runner
    fi
}

# ------------------------------------------------------------------------------------------- runner
NAMES=() STATUS=() SECS=()
run_section() {  # run_section <name> <function>: its own log; PASS/FAIL; the next section runs either way
    local name=$1 fn=$2 log="$LOGDIR/$1.log" rc t0 t1 secs
    if [[ "$SECTIONS" != all && " $SECTIONS " != *" $name "* ]]; then
        return 0
    fi
    echo
    echo "=== $name ==="
    t0=$(date +%s.%N)
    set +e
    ( set -euo pipefail; "$fn" ) >"$log" 2>&1   # a subshell: set -e really applies inside the section
    rc=$?
    set -e
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    if [[ $rc == 0 ]]; then
        # the section's own figure lines and its last few lines
        grep -v '^FIGURE' "$log" | grep -vE 'Warning|warn\(' | tail -n 8 || true
        grep '^FIGURE' "$log" || true
        echo "--- $name: PASS in ${secs} s"
        STATUS+=(PASS)
    else
        echo "--- last 40 lines of $log:"
        tail -n 40 "$log"
        echo "--- $name: FAIL (exit $rc) after ${secs} s"
        STATUS+=("FAIL(rc=$rc)")
    fi
    echo "FIGURE time[$name] ${secs} s" >>"$log"
    NAMES+=("$name")
    SECS+=("$secs")
    { echo "=================== $name (exit $rc, ${secs} s)"; cat "$log"; } >>"$ALL_LOG"
}

T_START=$(date +%s)
run_section env sec_env
run_section data sec_data
run_section train-vae sec_train_vae
run_section encode sec_encode
run_section train-mdrnn sec_train_mdrnn
run_section train-controller sec_train_controller
run_section evaluate sec_evaluate
run_section dream-stage sec_dream_stage
run_section bench-dream sec_bench_dream
run_section bench-train sec_bench_train
run_section test-cuda sec_test_cuda

summary() {
    echo "=================== SUMMARY (DEVICE=$DEVICE QUICK=$QUICK, $(( $(date +%s) - T_START )) s in all)"
    local i failed=0
    for i in "${!NAMES[@]}"; do
        printf '  %-18s %-12s %8s s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}"
        [[ "${STATUS[$i]}" == PASS ]] || failed=$((failed + 1))
    done
    echo "figures:"
    for i in "${!NAMES[@]}"; do
        grep '^FIGURE' "$LOGDIR/${NAMES[$i]}.log" | grep -v '^FIGURE time\[' | sed 's/^FIGURE /  /' || true
    done
    echo "sections failed: $failed of ${#NAMES[@]}"
}
summary | tee "$WORK/summary.txt"
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
    cp "$ALL_LOG" "$OUT/gpu_check.log"
    cp "$WORK/summary.txt" "$OUT/summary.txt"
fi
for s in "${STATUS[@]}"; do
    [[ "$s" == PASS ]] || exit 1
done
