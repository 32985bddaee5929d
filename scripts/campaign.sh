#!/usr/bin/env bash
# Run a campaign (results/NAME/run.sh, or results/NAME.sh such as results/queue.sh) in the background from a
# frozen copy of the package (a git worktree, /work/campaign by default, brought to this checkout's commit at
# each start), so that editing the package here cannot change or break a campaign mid-run. data/ and every
# results/<folder>/ of the worktree are links to this checkout's, so results land here, ready to commit; the
# scripts in results/ and the package are the frozen ones. Never edit a running campaign's run.sh in place
# (bash reads a script as it goes): replace it with mv.
#   scripts/campaign.sh start NAME      (log in data/NAME/campaign.log; refuses while a campaign runs)
#   scripts/campaign.sh status
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TREE=${CAMPAIGN_TREE:-/work/campaign}
PIDFILE=$ROOT/data/.campaign.pid
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
case ${1:-} in
  start)
    name=${2:?usage: $0 start NAME}
    if running; then
      echo "a campaign is running (pid $(cat "$PIDFILE"): $(ps -o args= -p "$(cat "$PIDFILE")")); not starting another" >&2
      exit 1
    fi
    head=$(git -C "$ROOT" rev-parse HEAD)
    if [ ! -d "$TREE" ]; then
      git -C "$ROOT" worktree add --detach "$TREE" "$head"
    else
      git -C "$TREE" checkout -q --force --detach "$head"
    fi
    for dir in data "$ROOT"/results/*/; do  # the worktree's copies become links to this checkout's folders
      rel=${dir#"$ROOT"/}; rel=${rel%/}
      rm -rf "${TREE:?}/$rel" && ln -s "$ROOT/$rel" "$TREE/$rel"
    done
    script=results/$name/run.sh
    [ -f "$TREE/$script" ] || script=results/$name.sh
    [ -f "$TREE/$script" ] || { echo "no results/$name/run.sh or results/$name.sh" >&2; exit 2; }
    mkdir -p "$ROOT/data/$name"
    cd "$TREE"
    WM_VENV="$ROOT/.venv" PYTHONPATH="$TREE" setsid nohup bash "$script" >> "$ROOT/data/$name/campaign.log" 2>&1 &
    echo $! > "$PIDFILE"
    echo "started $script at ${head:0:7} from $TREE (pid $!, log data/$name/campaign.log)";;
  status)
    if running; then echo "running: pid $(cat "$PIDFILE"): $(ps -o args= -p "$(cat "$PIDFILE")")"; else echo "no campaign running"; fi;;
  *) echo "usage: $0 start NAME | status" >&2; exit 2;;
esac
