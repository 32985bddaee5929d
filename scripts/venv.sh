# Sourced by run_pipeline.sh and run_tests.sh: create (or reuse) .venv and install the package into it.
# Re-installs only when setup.cfg changed since the last install (a stamp file records its hash).
# Override the interpreter with PYTHON=..., the venv location with WM_VENV=...
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${WM_VENV:-$_root/.venv}"
_python="${PYTHON:-python3}"
_extras="${1:-}"   # e.g. "[dev]"

if [ ! -x "$_venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $_venv"
  "$_python" -m venv "$_venv"
fi
_stamp="$_venv/.worldmodels-installed"
_hash="$(sha256sum < "$_root/setup.cfg" | cut -c1-16)"
_want="$_hash$_extras"
_have="$(cat "$_stamp" 2>/dev/null || true)"
# Up to date when setup.cfg is unchanged and the extras asked for are the ones installed (or none are asked).
if [ "$_have" != "$_want" ] && { [ -n "$_extras" ] || [ "${_have:0:16}" != "$_hash" ]; }; then
  echo "[setup] installing worldmodels$_extras (torch first, CPU wheel unless one is already installed)"
  "$_venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
  # torch first: with no torch installed, a looser spec lets pip fetch gigabytes of CUDA packages.
  "$_venv/bin/python" -c "import torch" 2>/dev/null || "$_venv/bin/python" -m pip install -q "torch==2.13.0"
  "$_venv/bin/python" -m pip install -q -e "$_root$_extras"
  echo "$_want" > "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
