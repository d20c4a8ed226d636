#!/usr/bin/env bash
# The test suite's wall time and its slowest tests: the README's test command, timed.
#
#   bash benchmarks/suite_time.sh [--no-cache] [--record] [pytest arguments ...]
#
# Runs `.venv/bin/python -m pytest` (PYTHON names another interpreter) with the arguments
# given (a test file, -k EXPR: a subset), keeps its whole output in a log, and prints the
# slowest 25 tests (pytest's --durations=25, set in pyproject.toml), pytest's summary line,
# the wall time, the machine (CPU, cores, load average before and after) and the log's path. Exits with pytest's status.
#
# The suite's processes share one persistent compilation cache, a new folder per run
# (tests/conftest.py); JAX_COMPILATION_CACHE_DIR=DIR keeps one across runs instead.
# --no-cache compiles everything in every process, to measure what the cache saves.
# --record writes each test file's seconds (setup, calls and teardown) into
# tests/file_seconds.json, replacing the entries of the files that ran: the workers take the
# longest files first (tests/conftest.py), so a refreshed table keeps the session's end short.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

python=${PYTHON:-.venv/bin/python}
cache="shared by the session's processes"
record=0
args=()
for arg in "$@"; do
  if [[ "$arg" == --no-cache ]]; then
    export JAX_COMPILATION_CACHE_DIR=""  # an empty folder name turns the cache off
    cache="off"
  elif [[ "$arg" == --record ]]; then
    record=1
  else
    args+=("$arg")
  fi
done
if [[ -n "${JAX_COMPILATION_CACHE_DIR:-}" ]]; then
  cache="$JAX_COMPILATION_CACHE_DIR"
fi

log=$(mktemp -t jackpot-suite-time.XXXXXX.log)
xml="${log%.log}.xml"
load_before=$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
SECONDS=0
"$python" -m pytest --junitxml="$xml" "${args[@]}" >"$log" 2>&1
status=$?
wall=$SECONDS
if (( record )); then
  "$python" - "$xml" tests/file_seconds.json <<'PY'
import collections, json, os, sys, xml.etree.ElementTree as ElementTree
report, table = sys.argv[1:]
seconds = collections.Counter()
for case in ElementTree.parse(report).getroot().iter("testcase"):
  parts = case.get("classname").split(".")  # the module's dotted path, then any classes
  while parts and not os.path.exists("/".join(parts) + ".py"):
    parts.pop()
  if parts:
    seconds["/".join(parts) + ".py"] += float(case.get("time"))
recorded = json.load(open(table))
recorded.update({path: round(value, 1) for path, value in seconds.items()})
with open(table, "w") as out:
  json.dump(recorded, out, indent=1, sort_keys=True)
  out.write("\n")
print(f"recorded the seconds of {len(seconds)} test files in {table}")
PY
fi

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
