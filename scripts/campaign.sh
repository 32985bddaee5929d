#!/usr/bin/env bash
# Run a results/<name>/run.sh campaign from a frozen copy of the code (a git worktree at /work/campaign by
# default), so that editing the package in this checkout cannot change or break a campaign mid-run.
# data/ is shared with this checkout; the campaign's results/<name>/ files land in the worktree, and
# `scripts/campaign.sh sync NAME` copies them back here to commit.
#   scripts/campaign.sh start NAME     (background; log in data/NAME/campaign.log)
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
    WM_VENV="$ROOT/.venv" PYTHONPATH="$TREE" setsid nohup bash "results/$name/run.sh" >> "$ROOT/data/$name/campaign.log" 2>&1 &
    echo "started results/$name/run.sh from $TREE (log: data/$name/campaign.log)";;
  sync)
    rsync -a --exclude '*.pyc' "$TREE/results/$name/" "$ROOT/results/$name/"
    echo "copied $TREE/results/$name/ -> results/$name/";;
  *) echo "usage: $0 start|sync NAME" >&2; exit 2;;
esac
