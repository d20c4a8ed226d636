#!/usr/bin/env bash
# Runs the real-data search test N times while two busy-loop processes occupy the cores.
#
#   bash scripts/stress.sh N [pytest node ...]
#
# Prints one line per run and then "N runs, A aborted" (A: runs killed by a signal, such as
# SIGABRT from native code); exits non-zero if any run aborted or failed. The log of every
# run that did not pass is kept under $STRESS_LOGS (default: a new temporary folder) with
# glibc's heap-check messages and Python's all-thread traceback in it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

runs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tests/integration/test_real_data_search.py)
python=${PYTHON:-.venv/bin/python}
logs=${STRESS_LOGS:-$(mktemp -d -t jackpot-stress.XXXXXX)}
mkdir -p "$logs"
# Fashion-MNIST is prepared by the first run and reused by the others.
export JACKPOT_TEST_TFDS_DIR=${JACKPOT_TEST_TFDS_DIR:-$logs/tfds}

busy=()
for _ in 1 2; do
  "$python" -c 'while True: pass' &
  busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT

aborted=0
failed=0
for run in $(seq 1 "$runs"); do
  log="$logs/run$run.log"
  began=$(date +%s)
  # LIBC_FATAL_STDERR_: glibc writes heap-corruption reports to stderr, not the terminal.
  # -s: native code's own last words (absl/XLA fatal logs) reach the log, not pytest's capture.
  LIBC_FATAL_STDERR_=1 "$python" -X faulthandler -m pytest -q -s -n 0 -p no:cacheprovider \
    "${targets[@]}" >"$log" 2>&1
  status=$?
  took=$(($(date +%s) - began))
  if [ $status -gt 128 ] || grep -q "Fatal Python error" "$log"; then
    aborted=$((aborted + 1))
    echo "run $run: ABORTED (status $status, ${took}s), log $log"
  elif [ $status -ne 0 ]; then
    failed=$((failed + 1))
    echo "run $run: failed (status $status, ${took}s), log $log"
  else
    rm -f "$log"
    echo "run $run: passed (${took}s)"
  fi
done

echo "$runs runs, $aborted aborted"
[ $failed -eq 0 ] || echo "$failed failed without aborting"
[ $aborted -eq 0 ] && [ $failed -eq 0 ]
