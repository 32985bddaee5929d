#!/usr/bin/env bash
# Run a campaign (results/NAME/run.sh, or results/NAME.sh such as results/queue.sh) in the background from a
# frozen copy of the package (a git worktree per campaign, /work/campaigns/NAME by default, brought to this
# checkout's commit at each start), so that editing the package here cannot change or break a campaign mid-run.
# Campaigns with different names may run at once (they must not share a data folder); on 2 cores each needs
# one torch thread: two campaigns each running 2 threads oversubscribe the cores (a V training beside a real-env
# search measured 7x slower than with 1 thread, an M training 7-15x). So a campaign started while another runs
# gets OMP_NUM_THREADS=1 unless you set it, and a start warns about a running one that has more. data/ and every
# results/<folder>/ of the worktree are links to this checkout's, so results land here, ready to commit; the
# scripts in results/ and the package are the frozen ones. Never edit a running campaign's run.sh in place
# (bash reads a script as it goes): replace it with mv.
#   scripts/campaign.sh start NAME      (log in data/NAME/campaign.log; refuses while NAME runs)
#   scripts/campaign.sh status          (every running campaign)
#   scripts/campaign.sh stop NAME
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
pidfile() { echo "$ROOT/data/.campaign-$1.pid"; }
running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
case ${1:-} in
  start)
    name=${2:?usage: $0 start NAME}
    TREE=${CAMPAIGN_TREE:-/work/campaigns/$name}
    PIDFILE=$(pidfile "$name")
    if running "$name"; then
      echo "campaign $name is running (pid $(cat "$PIDFILE"): $(ps -o args= -p "$(cat "$PIDFILE")")); not starting it again" >&2
      exit 1
    fi
    head=$(git -C "$ROOT" rev-parse HEAD)
    if [ ! -d "$TREE" ]; then
      mkdir -p "$(dirname "$TREE")"
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
    others=()
    for f in "$ROOT"/data/.campaign-*.pid; do
      [ -f "$f" ] || continue
      other=${f##*/.campaign-}; other=${other%.pid}
      [ "$other" != "$name" ] && running "$other" || continue
      others+=("$other")
      tr '\0' '\n' < "/proc/$(cat "$f")/environ" 2>/dev/null | grep -qx 'OMP_NUM_THREADS=1' ||
        echo "warning: campaign $other runs with a torch thread per core; restart it to share: $0 stop $other;" \
             "OMP_NUM_THREADS=1 $0 start $other" >&2
    done
    if [ ${#others[@]} -gt 0 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
      export OMP_NUM_THREADS=1
      echo "campaign ${others[*]} is running: $name gets OMP_NUM_THREADS=1"
    fi
    mkdir -p "$ROOT/data/$name"
    # The shared venv is brought up to date from this checkout first: were setup.cfg newer than its install, the
    # run.sh's own venv.sh would reinstall the package editable from the frozen tree, and every `worldmodels`
    # command here would then run the campaign's frozen copy.
    ( source "$ROOT/scripts/venv.sh" "" )  # "": no extras (not this script's arguments)
    cd "$TREE"
    WM_VENV="$ROOT/.venv" PYTHONPATH="$TREE" setsid nohup bash "$script" >> "$ROOT/data/$name/campaign.log" 2>&1 &
    echo $! > "$PIDFILE"
    echo "started $script at ${head:0:7} from $TREE (pid $!, log data/$name/campaign.log)";;
  status)
    any=0
    for f in "$ROOT"/data/.campaign-*.pid; do
      [ -f "$f" ] || continue
      name=${f##*/.campaign-}; name=${name%.pid}
      if running "$name"; then echo "$name: running, pid $(cat "$f")"; any=1; fi
    done
    [ $any = 1 ] || echo "no campaign running";;
  stop)
    name=${2:?usage: $0 stop NAME}
    if running "$name"; then kill -- -"$(cat "$(pidfile "$name")")" && echo "stopped $name"; else echo "$name is not running"; fi;;
  *) echo "usage: $0 start NAME | status | stop NAME" >&2; exit 2;;
esac
