# Shared by bench/accel_check.sh and bench/hpu_check.sh (sourced, not run): the set-up, the step
# runner and the steps both devices take the same way.

init_check() {  # init_check OUT_DIR: fresh summary and store under OUT_DIR; sets OUT, SUMMARY, PY
    OUT=$1
    mkdir -p "$OUT"
    SUMMARY="$OUT/summary.txt"
    : > "$SUMMARY"
    PY=${PYTHON:-python3}
    export HWCOST_DB="sqlite:///$PWD/$OUT/store.db"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    rm -f "$OUT/store.db"
}

step() {  # step NAME TIMEOUT_S COMMAND...: log to $OUT/NAME.log, record rc and time, go on
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name" >&2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$SUMMARY"
    return 0
}

run_1b_and_tables() {  # run_1b_and_tables DEVICE BUILD_S RUN_S TABLE_S
    local device=$1
    step build_1b "$2" $PY bench/scale.py --build 2048 --out /tmp/hwcost-llama-1b --layers 16 \
        --vocab 32000
    $PY - <<'PYEOF'
import numpy as np
rng = np.random.default_rng(0)
np.save("/tmp/hwcost-1b-calib.npy", rng.integers(0, 32000, (64, 128)))
np.save("/tmp/hwcost-1b-eval.npy", rng.integers(0, 32000, (32, 128)))
PYEOF
    step run_1b "$3" $PY -m hwcost.app run /tmp/hwcost-llama-1b --device "$device" \
        --shape batch=1,seq=128 --quick --calib /tmp/hwcost-1b-calib.npy \
        --eval-data /tmp/hwcost-1b-eval.npy --out "$OUT/llama1b" --json
    cp "$OUT/run_1b.log" "$OUT/run_1b.json" 2>/dev/null
    for table in measurement model_latency plan validation device; do
        step "table_$table" "$4" $PY -m hwcost.app db query "SELECT * FROM $table" --json
        mv "$OUT/table_$table.log" "$OUT/$table.json" 2>/dev/null
    done
    echo "results in $OUT; commit them (and say in docs/backends.md that $device was checked)" >&2
    cat "$SUMMARY"
}
