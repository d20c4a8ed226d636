#!/usr/bin/env bash
# The GPU benchmarks in one command, within 8 minutes on a single-GPU machine:
#   - ResNet-50 search and dense steps, batch 256, 224x224, synthetic data, in float32 and
#     bfloat16 (benchmarks/step_speed.py);
#   - the same search in PyTorch in the reference style (a per-layer host sort after each
#     step) and PyTorch's dense step, float32, on the same GPU (step_speed.py --torch);
#   - the mask-selection methods (benchmarks/mask_selection.py).
# It writes one JSON (and its table as .md, and every run's output as .log, beside it) and
# prints the table: images/s for each, search/dense, jackpot_jax / PyTorch images/s.
#
#   bash benchmarks/gpu_suite.sh [--smoke] [--out=PATH]
#
# --out: the JSON file if PATH ends in .json, else a folder to write gpu_suite.json in;
#   default $OUT/gpu_suite.json where $OUT is set (the device machine's folder that comes
#   back), else results/gpu_suite/gpu_suite.json (with --smoke, a folder under $TMPDIR).
# --smoke: tiny sizes on the CPU (JAX and PyTorch), so that the suite is known to run
#   before a GPU is lent; tests/integration/test_gpu_suite.py runs it.
# PYTHON: the interpreter (default python, else python3). It needs jax, flax, optax,
#   orbax-checkpoint and torch; any other module the benchmarks import that it lacks is
#   installed, for this run only, from the wheels in benchmarks/gpu_wheels/
#   (benchmarks/gpu_wheels.sh brings them).
#
# A run that fails or overruns its time limit is recorded; the others still run, the table
# shows what worked, and the suite then exits 2 with one line naming what failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python || echo python3)}"
smoke=0
out=""
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --out=*) out="${arg#--out=}" ;;
    *) echo "gpu_suite: unknown argument '$arg' (it takes --smoke and --out=PATH)" >&2; exit 2 ;;
  esac
done
if [[ -z "$out" ]]; then
  if [[ -n "${OUT:-}" ]]; then
    out="$OUT/gpu_suite.json"
  elif (( smoke )); then
    out="${TMPDIR:-/tmp}/gpu_suite_smoke/gpu_suite.json"
  else
    out="$root/results/gpu_suite/gpu_suite.json"
  fi
elif [[ "$out" != *.json ]]; then
  out="$out/gpu_suite.json"
fi
mkdir -p "$(dirname "$out")" || exit 2
log="${out%.json}.log"
: > "$log"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$root" || exit 2

if (( smoke )); then
  limits=(devices=120 f32=400 bf16=300 mask_selection=300)
  torch_device=cpu
  export JAX_PLATFORMS=cpu
  sizes=(--model=resnet8 --image_size=8 --batch_size=4 --num_classes=10 --repeats=1
         --warmup=1 --steps_per_round=1)
  mask_args=(--smoke)
else
  # The most each run may take (s): with 5 s each to die after its TERM, and the set-up,
  # the suite ends within 8 minutes.
  limits=(devices=30 f32=200 bf16=135 mask_selection=65)
  torch_device=cuda
  sizes=(--model=resnet50 --image_size=224 --batch_size=256 --num_classes=1000 --repeats=5
         --warmup=1 --steps_per_round=0)
  mask_args=(--model=resnet50 --image_size=224 --batch_size=256 --num_classes=1000)
fi
declare -A limit
for pair in "${limits[@]}"; do limit[${pair%%=*}]="${pair#*=}"; done

# Modules the benchmarks import; those missing are installed from benchmarks/gpu_wheels.
modules=(jax flax optax orbax.checkpoint torch absl yaml ml_collections)
missing_modules() {
  "$python" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "${modules[@]}"
}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
missing="$(missing_modules)" || { echo "gpu_suite: cannot run '$python'" >&2; exit 2; }
if [[ -n "$missing" ]]; then
  wheels=("$root"/benchmarks/gpu_wheels/*.whl)
  if [[ -e "${wheels[0]}" ]]; then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$work/site" \
      --find-links "$root/benchmarks/gpu_wheels" "${wheels[@]}" >> "$log" 2>&1
    export PYTHONPATH="$PYTHONPATH:$work/site"
    missing="$(missing_modules)"
  fi
  if [[ -n "$missing" ]]; then
    echo "gpu_suite: $python lacks $missing and benchmarks/gpu_wheels/ has no wheel for it" \
         "(run bash benchmarks/gpu_wheels.sh where PyPI is reachable; see $log)" >&2
    exit 2
  fi
fi

export PYTHONUNBUFFERED=1
runs=()
failed=()
# run NAME CMD...: CMD under NAME's time limit, its stdout in $work/NAME.out, both streams
# appended to the log; a failure is recorded for collect, and its last lines go to stderr.
run() {
  local name="$1"
  shift
  local seconds="${limit[$name]}" start=$SECONDS status
  timeout --kill-after=5 "$seconds" "$@" > "$work/$name.out" 2> "$work/$name.err"
  status=$?
  echo "gpu_suite: $name exit $status after $((SECONDS - start)) s (limit $seconds s)" >&2
  { echo "== $name: $* (exit $status, $((SECONDS - start)) s)"; cat "$work/$name.err" \
      "$work/$name.out"; } >> "$log"
  runs+=("--run=$name=$work/$name.out")
  if (( status == 124 || status == 137 )); then
    failed+=("--failed=$name=timed out after $seconds s")
  elif (( status != 0 )); then
    failed+=("--failed=$name=exit $status")
  else
    return 0
  fi
  tail -n 15 "$work/$name.err" >&2
}

# Alone and without taking the GPU's memory, so the runs after it have the whole GPU.
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout --kill-after=5 "${limit[devices]}" \
  "$python" benchmarks/gpu_suite_table.py devices --torch_device="$torch_device" \
  > "$work/devices.json" 2>> "$log"
# JAX takes 75% of the GPU's memory by default; with PyTorch in the same process, half each.
XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}" \
  run f32 "$python" benchmarks/step_speed.py "${sizes[@]}" --config.model.dtype=float32 \
  --torch --torch_device="$torch_device"
run bf16 "$python" benchmarks/step_speed.py "${sizes[@]}" --config.model.dtype=bfloat16
run mask_selection "$python" benchmarks/mask_selection.py "${mask_args[@]}"

smoke_flag=()
(( smoke )) && smoke_flag=(--smoke)
"$python" benchmarks/gpu_suite_table.py collect --out="$out" --devices="$work/devices.json" \
  --log="$log" "${runs[@]}" "${failed[@]}" "${smoke_flag[@]}" || exit 2
echo "gpu_suite: wrote $out (table ${out%.json}.md, log $log)" >&2
