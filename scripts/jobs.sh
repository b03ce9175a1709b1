#!/usr/bin/env bash
# Runs jobs from stdin, SLOTS at a time: one job per line, `name<TAB>command`, longest first.
#   scripts/jobs.sh SLOTS LOGDIR < list
# Each job's output goes to LOGDIR/name.log and is shown when the job ends (the last lines when
# it passed, all of it when it failed), so parallel jobs never interleave their output. Exits 1
# after every job has run when any failed, naming them.
#
# Why: `cargo test` runs test binaries one after another and `node --test` runs one file at a
# time on 2 cores; each of them leaves a core idle for long stretches (process starts, model
# loads, readbacks, lavapipe compiling a pipeline on one thread). Run side by side they keep both
# cores busy.
set -uo pipefail
slots=${1:?slots}
logdir=${2:?log folder}
mkdir -p "$logdir"

declare -A name_of start_of
failed=()
running=0

reap() {
  local pid rc
  wait -n -p pid
  rc=$?
  local name=${name_of[$pid]} took=$(( $(date +%s) - ${start_of[$pid]} ))
  running=$((running - 1))
  if [ "$rc" = 0 ]; then
    echo "== $name: passed in ${took} s"
    grep -E '^(test result:|# (pass|fail|duration_ms) )' "$logdir/$name.log" | tail -n 3
  else
    echo "== $name: FAILED (exit $rc) after ${took} s; its output:"
    cat "$logdir/$name.log"
    failed+=("$name")
  fi
}

while IFS=$'\t' read -r name cmd; do
  [ -n "$name" ] || continue
  while [ "$running" -ge "$slots" ]; do reap; done
  bash -c "$cmd" > "$logdir/$name.log" 2>&1 &
  name_of[$!]=$name
  start_of[$!]=$(date +%s)
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do reap; done

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
