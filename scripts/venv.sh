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
  # envpool (the fast CarRacing backend) has wheels for CPython >= 3.11 on Linux x86_64 only. It is a second
  # install because it needs glfw >= 2.10 while gym3 (procgen's) pins glfw < 2, which one resolve refuses;
  # gym3 uses glfw only for its interactive viewer. Elsewhere the reference envs are used (auto falls back).
  if "$_venv/bin/python" -c 'import sys, platform; sys.exit(not (sys.version_info >= (3, 11) and platform.system() == "Linux" and platform.machine() == "x86_64"))'; then
    "$_venv/bin/python" -m pip install -q "envpool==1.2.5" 2>&1 | grep -v -e "dependency resolver" -e "requires glfw" || true
    "$_venv/bin/python" -c "import envpool" 2>/dev/null || echo "[setup] envpool did not install; the reference envs will be used"
  fi
  echo "$_want" > "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
