#!/usr/bin/env bash
# The whole World Models pipeline in one command:
#   collect -> train-vae -> encode -> train-mdrnn -> train-controller -> evaluate -> report
#
#   ./run_pipeline.sh [--env carracing|doom-takecover|procgen:<game>] [--preset smoke|default|cpu|paper]
#                     [--run-dir DIR] [--from STAGE] [--force] [--seed N]
#
# Creates (or reuses) .venv and installs the package on first use. Finished stages whose config is unchanged
# are skipped; a changed config redoes that stage and the ones after it; a killed run resumes.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh ""
exec python -m worldmodels.pipeline "$@"
