#!/usr/bin/env bash
# Set up the virtual environment (with test extras) and run the test suite.
# Extra arguments go to pytest, e.g. ./run_tests.sh -m slow   or   ./run_tests.sh tests/test_config.py
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh "[dev,distributed,tensorboard]"
# Two test processes (WM_TEST_WORKERS=0 runs in this one), each module in one of them (--dist loadfile): a module's
# shared fixtures (notebooks, the smoke pipeline) are built once per process that runs it.
workers=${WM_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then exec python -m pytest -q "$@"; fi
exec python -m pytest -q -n "$workers" --dist loadfile "$@"
