#!/usr/bin/env bash
# Every campaign, in the order they share this 2-core machine; each is resumable, so rerunning this continues
# where the last session stopped (scripts/campaign.sh start queue runs it in the background from a frozen copy of
# the code). CarRacing's world (data, V, M, the random baseline) comes first, as the dream campaign builds on it;
# its real-env C is the long one: it grows to 60 generations (scored on 100 tracks there, a point of its
# learning curve) after the dream campaigns (8 rounds of iterate: its real score still rose each round where V was
# kept; then a dream whose M learned from the real-env C's driving, and 8 iterate rounds on that world), with the
# V-only ablation at 39 (the full model's budget when the ablation first ran at 20), then to 100 and 200. The ProcGen study is its own campaign beside this one
# (OMP_NUM_THREADS=1 scripts/campaign.sh start procgen-study): each then gets about one core.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "[queue] $(date -u +%FT%TZ) $*"; env "$@"; }
step bash results/doom/run.sh
step GENERATIONS=0 GENERATIONS_Z=0 bash results/carracing/run.sh
step bash results/carracing-dream/run.sh
step bash results/carracing-dream-expert/run.sh
step GENERATIONS=60 GENERATIONS_Z=39 bash results/carracing/run.sh
step ROUNDS=8 bash results/carracing-dream-expert/run.sh
step GENERATIONS=100 GENERATIONS_Z=39 GENS_STEP=4 bash results/carracing/run.sh
step GENERATIONS=200 GENERATIONS_Z=100 bash results/carracing/run.sh
echo "[queue] $(date -u +%FT%TZ) every campaign is done"
