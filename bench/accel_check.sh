#!/usr/bin/env bash
# One prepared check of the CUDA backend on an NVIDIA H100/H200, meant to finish in < 8 minutes
# on a fresh machine (torch with CUDA from PyPI). Until it has run and its results are committed,
# the CUDA backend is UNVERIFIED (hwcost doctor says so).
#
#   bash bench/accel_check.sh            # from the repository root
#
# Steps (each under its own timeout, 540 s in all; a failing step is recorded and the next one
# still runs):
#   1. venv + pip install torch (the PyPI wheel for Linux is built with CUDA) and hwcost[torch,test]
#   2. nvidia-smi, hwcost doctor --json
#   3. the CUDA backend's correctness tests: every precision deployed with the real kernel
#      (_scaled_mm fp8, _int_mm int8, bf16) matches the registry's emulation, low-precision
#      operands reach the matmul, the deployed model matches on a real model
#   4. hwcost run --device cuda on the demo model (bf16 baseline, model and batches on the card)
#   5. hwcost run --device cuda on a 1B-class Llama (hidden 2048, 16 layers, vocab 32000,
#      random weights built from a config), calibration and held-out token ids from numpy
#   6. the measured tables (subgraph timings, whole-model latencies, plans, validations) as CSV
# Everything lands in bench/results/cuda/ (summary.txt lists each step's status and time).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/check_steps.sh
. bench/check_steps.sh
init_check bench/results/cuda

if [ -z "${HWCOST_NO_VENV:-}" ]; then
    $PY -m venv .venv-cuda && . .venv-cuda/bin/activate && PY=python
    step install 180 bash -c "pip install -q --upgrade pip && pip install -q torch && pip install -q -e '.[torch,test]'"
fi
step gpu 10 nvidia-smi
step doctor 30 $PY -m hwcost.app doctor --json
cp "$OUT/doctor.log" "$OUT/doctor.json" 2>/dev/null
step backend_tests 80 $PY -m pytest -q -p no:cacheprovider -k "cuda" \
    tests/profiles/test_backends.py tests/profiles/test_emulation_matches_deployment.py \
    --junitxml="$OUT/backend_tests.xml"
step run_demo 60 $PY -m hwcost.app run --device cuda --shape batch=1,seq=128 --quick \
    --out "$OUT/demo" --json
cp "$OUT/run_demo.log" "$OUT/run_demo.json" 2>/dev/null
run_1b_and_tables cuda 30 120 5
