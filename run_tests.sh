#!/usr/bin/env bash
# Set up the virtual environment (with test extras) and run the test suite.
# Extra arguments go to pytest, e.g. ./run_tests.sh -m slow   or   ./run_tests.sh tests/test_config.py
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh "[dev,distributed,tensorboard]"
exec python -m pytest -q "$@"
