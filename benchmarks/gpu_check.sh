#!/usr/bin/env bash
# GPU check of the built-in model on one CUDA device, time-boxed to 10 minutes in all.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        (from the repository root; no network needed)
#
# Stages (each its own process, each under `timeout`, a failed or killed one recorded and the next
# still run): device check; CUDA float32 vs CPU float32 parity of every preset; CUDA bf16 vs float32
# agreement and accuracy; `bench --suite main` at batch 1 and at batch 8. Results:
# $OUT/gpu_check.json (and $OUT/bench_b1, $OUT/bench_b8, one log per stage); the Markdown summary is
# printed at the end. Knobs (environment): PYTHON (default python), GPU_CHECK_N (prompts for parity
# and bf16, default 32), GPU_CHECK_BUDGET_S (the whole run, default 570); for a dry run of this
# script on a CPU only: GPU_CHECK_DEVICE=cpu and GPU_CHECK_ARGS (extra flags, e.g. "--threads 1").
set -u

cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/gpu_check.json"   # the stages merge into it: start from nothing
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
N=${GPU_CHECK_N:-32}
TOTAL=${GPU_CHECK_BUDGET_S:-570}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
read -r -a EXTRA <<<"${GPU_CHECK_ARGS:-}"
REPORT_RESERVE=25   # kept back for the final summary
START=$SECONDS

say() { echo "[gpu_check +$((SECONDS - START))s] $*"; }
left() { echo $((TOTAL - (SECONDS - START) - REPORT_RESERVE)); }

# run_stage NAME BUDGET_S ARGS...: the stage under `timeout` (at most BUDGET_S, at most what is left);
# the Python side gets an internal deadline 20 s shorter so it can record its result itself.
run_stage() {
    local name=$1 budget=$2
    shift 2
    local avail
    avail=$(left)
    if ((avail < budget)); then budget=$avail; fi
    if ((budget < 30)); then
        say "stage $name: SKIPPED, only ${budget}s left in the ${TOTAL}s budget"
        return 0
    fi
    say "stage $name: start (time box ${budget}s, log $OUT/$name.log)"
    local t0=$SECONDS rc=0
    timeout -k 10 "$budget" "$PY" benchmarks/gpu_check.py --device "$DEVICE" --out "$OUT" --n "$N" \
        --stages "$name" --deadline-s $((budget - 20)) "${EXTRA[@]}" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    if ((rc == 124 || rc == 137)); then
        say "stage $name: KILLED after $((SECONDS - t0))s (time box ${budget}s); recorded as running"
    elif ((rc != 0)); then
        say "stage $name: FAILED rc=$rc after $((SECONDS - t0))s; last lines of its log:"
        tail -n 15 "$OUT/$name.log" | sed 's/^/    /'
    else
        say "stage $name: done in $((SECONDS - t0))s"
    fi
    return 0
}

say "repo $PWD, OUT=$OUT, python $(command -v "$PY"), budget ${TOTAL}s"
rc=0
timeout -k 5 60 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --out "$OUT" --stages check || rc=$?
if ((rc != 0)); then
    echo
    echo "=================================================================="
    echo " GPU CHECK NOT RUN: CUDA is not available here (device check rc=$rc)."
    echo " This script needs a CUDA build of torch and a visible NVIDIA GPU."
    echo " Details: $OUT/gpu_check.json. CPU smoke test instead:"
    echo "   PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --n 2 --stages parity,bf16"
    echo "=================================================================="
    exit 3
fi

run_stage parity 210
run_stage bf16 120
run_stage bench 190

say "summary"
timeout -k 5 20 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --out "$OUT" --stages report \
    || say "report FAILED; the raw results are in $OUT/gpu_check.json"
say "finished in $((SECONDS - START))s"
