#!/usr/bin/env bash
# Per-batch speed over batch sizes, widths, simulated steps and dtypes (DFC wake with pretrained
# feedback, sleep phase, BP), one row per setting, via bench_simulation.py. Extra arguments are
# passed to every call (e.g. --threads 1 --max-foreign-load 1.6 on a shared machine).
#   bash benchmarks/speed_sweep.sh --data-dir ../shared/data > sweep.md
# DTYPES and BATCHES (environment) restrict the sweep. Feedback pre-training uses 30 sleep batches,
# fewer for batch sizes >= 512 (the 6,000-image offline subset holds 5 batches of 1,024 beside the
# measured one).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
run() {  # label, then bench_simulation arguments
  local label=$1; shift
  "$PY" benchmarks/bench_simulation.py --feedback pretrained --variants dfc sleep bp --no-reference \
      --repeats 2 "$@" 2>&1 | grep -E '^\| (wake|sleep)|needed|Error' | sed "s/^| /| $label | /" || true
}
echo "| setting | phase | tol | outer_every | steps | non-conv. | time [s] | min-max [s] | ms/step | other load [cores] | GEMM GFLOP/s | peak RSS [MB] | + during call [MB] | cos vs exact | vs authors |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for dtype in ${DTYPES:-float64 float32}; do
  for batch in ${BATCHES:-32 128 512 1024}; do
    pre=30; [ "$batch" -ge 512 ] && pre=4
    run "$dtype B=$batch" --dtype "$dtype" --batch-size "$batch" --pretrain-batches "$pre" "$@"
  done
  [ -n "${BATCHES:-}" ] && continue
  run "$dtype width 1024" --dtype "$dtype" --sizes 784 1024 1024 1024 10 "$@"
  run "$dtype T=200, no early stop" --dtype "$dtype" --steps 200 --no-early-stop "$@"
  run "$dtype T=1000, no early stop" --dtype "$dtype" --steps 1000 --no-early-stop "$@"
done
