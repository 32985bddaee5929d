#!/usr/bin/env bash
# Run a results/<name>/run.sh campaign from a frozen copy of the code (a git worktree at /work/campaign by
# default), so that editing the package in this checkout cannot change or break a campaign mid-run.
# data/ is shared with this checkout; the campaign's results/<name>/ files land in the worktree, and
# `scripts/campaign.sh sync NAME` copies them back here to commit.
#   scripts/campaign.sh start NAME     (results/NAME/run.sh or results/NAME.sh, in the background; log in
#                                       data/NAME/campaign.log)
#   scripts/campaign.sh sync NAME
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TREE=${CAMPAIGN_TREE:-/work/campaign}
cmd=$1 name=$2
case $cmd in
  start)
    if [ ! -d "$TREE" ]; then  # data/ is tracked (its README), so the worktree's copy is replaced by a link
      git -C "$ROOT" worktree add --detach "$TREE" HEAD
      rm -rf "$TREE/data" && ln -s "$ROOT/data" "$TREE/data"
    fi
    mkdir -p "$ROOT/data/$name"
    cd "$TREE"
    script=results/$name/run.sh
    [ -f "$script" ] || script=results/$name.sh
    [ -f "$script" ] || { echo "no results/$name/run.sh or results/$name.sh in $TREE" >&2; exit 2; }
    WM_VENV="$ROOT/.venv" PYTHONPATH="$TREE" setsid nohup bash "$script" >> "$ROOT/data/$name/campaign.log" 2>&1 &
    echo "started $script from $TREE (log: data/$name/campaign.log)";;
  sync)  # NAME: one results folder, or "all"
    for dir in $([ "$name" = all ] && ls -d "$TREE"/results/*/ || echo "$TREE/results/$name/"); do
      rsync -a --exclude '*.pyc' --exclude __pycache__ "$dir" "$ROOT/results/$(basename "$dir")/"
      echo "copied $dir -> results/$(basename "$dir")/"
    done;;
  *) echo "usage: $0 start|sync NAME" >&2; exit 2;;
esac
