#!/usr/bin/env bash
# The test suite's wall time and its slowest tests: the README's test command, timed.
#
#   bash benchmarks/suite_time.sh [--no-cache] [pytest arguments ...]
#
# Runs `.venv/bin/python -m pytest` (PYTHON names another interpreter) with the arguments
# given (a test file, -k EXPR: a subset), keeps its whole output in a log, and prints the
# slowest 25 tests (pytest's --durations=25, set in pyproject.toml), pytest's summary line,
# the wall time, the machine (CPU, cores, load average before and after) and the log's path. Exits with pytest's status.
#
# The suite's processes share one persistent compilation cache, a new folder per run
# (tests/conftest.py); JAX_COMPILATION_CACHE_DIR=DIR keeps one across runs instead.
# --no-cache compiles everything in every process, to measure what the cache saves.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

python=${PYTHON:-.venv/bin/python}
cache="shared by the session's processes"
args=()
for arg in "$@"; do
  if [[ "$arg" == --no-cache ]]; then
    export JAX_COMPILATION_CACHE_DIR=""  # an empty folder name turns the cache off
    cache="off"
  else
    args+=("$arg")
  fi
done
if [[ -n "${JAX_COMPILATION_CACHE_DIR:-}" ]]; then
  cache="$JAX_COMPILATION_CACHE_DIR"
fi

log=$(mktemp -t jackpot-suite-time.XXXXXX.log)
load_before=$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
SECONDS=0
"$python" -m pytest "${args[@]}" >"$log" 2>&1
status=$?
wall=$SECONDS

# pytest's durations block: from its header to the first blank line after it.
awk '/slowest [0-9]+ durations/ {on = 1} on && /^$/ {exit} on' "$log"
echo
echo "pytest: $(tail -n 1 "$log")"
printf 'wall: %d s (%dm%02ds), exit status %d, compilation cache: %s\n' \
  "$wall" $((wall / 60)) $((wall % 60)) "$status" "$cache"
cpu=$(grep -m1 "model name" /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs)
echo "machine: ${cpu:-unknown CPU}, $(nproc) cores; load average before: $load_before, after: $(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "log: $log"
exit "$status"
