#!/usr/bin/env bash
# One prepared check of the HPU backend on an Intel Gaudi 2/3 machine with the Gaudi software
# stack (habana_frameworks comes with it, not from PyPI; use Intel's PyTorch container). Until it
# has run and its results are committed, the HPU backend is UNVERIFIED (hwcost doctor says so).
#
#   bash bench/hpu_check.sh              # from the repository root, inside the Gaudi container
#
# What it checks, against the documented habana_frameworks.torch and Neural Compressor APIs:
#   - hwcost doctor: the hpu backend usable, the device name (GAUDI2 -> fp8 range +-240,
#     GAUDI3 -> +-448);
#   - torch.ops.hpu.fp8_gemm_v2 called positionally with the public schema's arguments
#     (A, trans_A, B, trans_B, D, out_dtype, A_scale_inv, B_scale_inv, bias, accumulate):
#     the deployed fp8 layer equals the emulation at the device's range (tests/profiles);
#   - timing in lazy mode (PT_HPU_LAZY_MODE=1): HpuBackend.synchronize calls htcore.mark_step()
#     before torch.hpu.synchronize(), so a timed call is the graph run, not its recording; the
#     check times one layer both ways and records the ratio;
#   - hwcost run --device hpu on the demo model and on a 1B-class Llama (bf16 baseline on the
#     card, batches follow the model).
# Everything lands in bench/results/hpu/ (summary.txt lists each step's status and time).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/check_steps.sh
. bench/check_steps.sh
init_check bench/results/hpu
export PT_HPU_LAZY_MODE=${PT_HPU_LAZY_MODE:-1}

# the Gaudi container has torch and habana_frameworks; add hwcost without touching torch
step install 300 bash -c "$PY -m pip install -q --no-deps -e . && $PY -m pip install -q \
    sqlmodel sqlalchemy duckdb pyarrow ortools scikit-learn click platformdirs tqdm matplotlib \
    'psycopg[binary]' transformers safetensors pytest hypothesis 'neural-compressor-pt>=3.10'"
step hl_smi 10 hl-smi
step doctor 60 $PY -m hwcost.app doctor --json
cp "$OUT/doctor.log" "$OUT/doctor.json" 2>/dev/null
step backend_tests 300 $PY -m pytest -q -p no:cacheprovider -k "hpu" \
    tests/profiles/test_backends.py tests/profiles/test_emulation_matches_deployment.py \
    tests/profiles/test_hpu_layer.py --junitxml="$OUT/backend_tests.xml"
step lazy_sync 120 $PY - <<'PYEOF'
# one fp8 layer timed with a plain torch.hpu.synchronize() and with the backend's
# synchronize (mark_step first): in lazy mode the first times the recording only
import time, torch
from hwcost.profiles.backends import get_backend
hpu = get_backend("hpu"); hpu.require()
layer = hpu.deploy_linear(torch.nn.Linear(4096, 4096), "fp8_e4m3")
x = torch.randn(2048, 4096, device=hpu.device, dtype=torch.bfloat16)
def timed(sync):
    for _ in range(3): layer(x); sync()
    t0 = time.perf_counter()
    for _ in range(20): layer(x); sync()
    return (time.perf_counter() - t0) / 20 * 1e6
plain, marked = timed(torch.hpu.synchronize), timed(hpu.synchronize)
print(f"device {hpu.available()[1]}, fp8 range {hpu.fp8_max()}")
print(f"fp8 4096x4096 x 2048 tokens: {plain:.0f} us with synchronize() alone, "
      f"{marked:.0f} us with mark_step()+synchronize()")
PYEOF
step run_demo 600 $PY -m hwcost.app run --device hpu --shape batch=1,seq=128 --quick \
    --out "$OUT/demo" --json
cp "$OUT/run_demo.log" "$OUT/run_demo.json" 2>/dev/null
run_1b_and_tables hpu 120 900 10
