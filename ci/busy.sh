#!/usr/bin/env bash
# Runs a command beside other work, as on a shared CI runner: BUSY_CORES (default 1) busy loops
# run at normal priority for as long as the command does, then are stopped. The check of issue
# "CI on a busy machine": `bash ci/busy.sh bash .ci/run` must pass, from a clean clone, on 2 cores.
#   bash ci/busy.sh COMMAND [ARGS...]
set -euo pipefail
[ $# -gt 0 ] || { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
cores=${BUSY_CORES:-1}
case "$cores" in ''|*[!0-9]*) echo "ci/busy.sh: BUSY_CORES wants a whole number, got '$cores'" >&2; exit 2 ;; esac
hogs=()
stop() { [ ${#hogs[@]} = 0 ] || kill "${hogs[@]}" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 1 "$cores"); do
  bash -c 'while :; do :; done' &
  hogs+=("$!")
done
echo "ci/busy.sh: $cores busy loop(s) beside: $* (load before: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
start=$(date +%s)
rc=0; "$@" || rc=$?
echo "ci/busy.sh: '$*' exited $rc after $(( $(date +%s) - start )) s with $cores core(s) kept busy" >&2
exit "$rc"
