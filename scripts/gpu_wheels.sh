#!/usr/bin/env bash
# Fill .gpu_wheels/ with the pure-Python packages benchmarks/gpu_check.sh needs on a GPU machine that has
# torch, numpy, h5py, matplotlib, imageio, tqdm and pyyaml but nothing else and no network:
#   gymnasium (the dream's gym envs; worldmodels.dream imports it) and its pure deps cloudpickle and
#   farama_notifications; cma (train-controller's CMA-ES); pytest and its deps (tests/test_cuda.py).
# typing_extensions (a gymnasium dep that torch already brings) goes to .gpu_wheels/fallback/, which
# gpu_check.sh puts on the path only if the machine lacks it, so it never shadows the machine's copy.
#
#   bash scripts/gpu_wheels.sh                 # then carry .gpu_wheels to the GPU machine
#   PIP=".venv/bin/pip" bash scripts/gpu_wheels.sh
#
# Wheels are downloaded for CPython 3.12 (--python-version 3.12, --only-binary, --no-deps: every one is
# py3-none-any) and unzipped: an unpacked wheel is an importable folder. Versions are pinned to what
# the project's venv runs (gymnasium 1.x and cma 4.x are numpy-2 compatible).
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${PIP:-}
if [[ -z "$PIP" ]]; then
    if [[ -x .venv/bin/pip ]]; then PIP=.venv/bin/pip; else PIP="python3 -m pip"; fi
fi
DEST=.gpu_wheels
MAIN=(gymnasium==1.4.0 cloudpickle==3.1.3 farama-notifications==0.0.6 cma==4.5.0
      pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0)
FALLBACK=(typing-extensions==4.16.0)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
download() {  # download <dir> <requirement>...
    local dir=$1; shift
    $PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi none --platform any --dest "$dir" "$@"
}
mkdir -p "$tmp/main" "$tmp/fallback"
download "$tmp/main" "${MAIN[@]}"
download "$tmp/fallback" "${FALLBACK[@]}"

rm -rf "$DEST"
mkdir -p "$DEST/fallback"
unpack() {  # unpack <wheel dir> <target>
    local whl
    for whl in "$1"/*.whl; do
        python3 - "$whl" "$2" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
EOF
        echo "  $(basename "$whl") -> $2"
    done
}
echo "unpacking into $DEST:"
unpack "$tmp/main" "$DEST"
unpack "$tmp/fallback" "$DEST/fallback"
du -sh "$DEST" | sed 's/^/size: /'
