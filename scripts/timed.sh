# Sourced by results/<name>/run.sh: `timed NAME CMD...` runs CMD and appends "NAME<TAB>seconds" to
# $HERE/timings.tsv, the campaign's wall-clock per stage (results/tables.py cost sums it).
# A stage already finished returns in seconds on a rerun: rows under 10 s are left out, so cost sums count work once.
timed() { local name=$1 t0=$SECONDS; shift; "$@"; (( SECONDS - t0 < 10 )) || printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$HERE/timings.tsv"; }
