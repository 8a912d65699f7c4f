"""Storage benchmark: a ~1,000,000-row measurement store on SQLite and on PostgreSQL.

Times, per backend: fetching one model's cost table (Store.model_costs, ~4,000 rows),
exporting the whole store to a bundle, importing that bundle into an empty store.

    source /tmp/pgenv   # HWCOST_TEST_PG: an admin URL that may CREATE DATABASE
    .venv/bin/python bench/store.py [--rows 1000000] [--backends sqlite,postgresql]

Writes bench/results/store.json and store.md; ends with one ``target:`` line per target and
backend. The grid of devices x subgraphs x shapes x configs is synthetic (a storage
benchmark); the rows, indexes and code paths are the real ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.synthetic: the test helpers that make synthetic stores

from hwcost.store import open_store  # noqa: E402
from hwcost.store.exchange import export_bundle, import_bundle  # noqa: E402
from tests.synthetic import PRECISIONS, device, fill_grid, scratch_pg_database  # noqa: E402

RESULTS = Path(__file__).parent / "results"
N_DEVICES, N_SLOTS, MODEL_POSITIONS = 4, 3, 64
SHAPES = [f"batch={b},seq={s},phase=prefill" for b in (1, 8) for s in (128, 512, 2048)] + \
         [f"batch={b},kv=4096,phase=decode" for b in (1, 8)]
GOALS = {"fetch_model_table": (50.0, "ms"), "export": (10.0, "s"), "import": (30.0, "s")}


def _pg_database() -> tuple[str, callable]:
    admin = os.environ.get("HWCOST_TEST_PG")
    if not admin:
        raise SystemExit("set HWCOST_TEST_PG (source /tmp/pgenv) to benchmark PostgreSQL")
    return scratch_pg_database(admin, prefix="hwcost_bench")


def _new_store(backend: str, tmp: Path, tag: str):
    if backend == "sqlite":
        return f"sqlite:///{tmp / f'{tag}.db'}", (lambda: None)
    return _pg_database()


def run_backend(backend: str, rows: int, tmp: Path) -> dict:
    n_configs = len(PRECISIONS) ** N_SLOTS
    n_subgraphs = math.ceil(rows / (N_DEVICES * len(SHAPES) * n_configs))
    drops = []
    try:
        url, drop = _new_store(backend, tmp, "src")
        drops.append(drop)
        store = open_store(url)
        t0 = time.perf_counter()
        n = fill_grid(store, N_DEVICES, n_subgraphs, SHAPES, n_slots=N_SLOTS,
                      model_positions=MODEL_POSITIONS)
        build_s = time.perf_counter() - t0
        fp = device(0).fingerprint
        store.model_costs("grid-model", fp, SHAPES[2])  # warm caches and the plan
        fetch = []
        for _ in range(20):
            t0 = time.perf_counter()
            cost_rows = store.model_costs("grid-model", fp, SHAPES[2])
            fetch.append((time.perf_counter() - t0) * 1000)
        bundle = tmp / f"{backend}.parquet"
        t0, c0 = time.perf_counter(), time.process_time()
        exp = export_bundle(store, bundle)
        export_s, export_cpu = time.perf_counter() - t0, time.process_time() - c0
        store.close()
        url2, drop2 = _new_store(backend, tmp, "dst")
        drops.append(drop2)
        dst = open_store(url2)
        t0, c0 = time.perf_counter(), time.process_time()
        rep = import_bundle(dst, bundle)
        import_s, import_cpu = time.perf_counter() - t0, time.process_time() - c0
        if rep.tables["measurement"].new != n:
            raise RuntimeError(f"import lost rows: {rep.tables['measurement'].new} of {n} arrived")
        dst.close()
        return {"backend": backend, "rows": n, "build_s": round(build_s, 2),
                "model_table_rows": len(cost_rows),
                "fetch_model_table_ms": round(statistics.median(fetch), 2),
                "fetch_model_table_ms_max": round(max(fetch), 2),
                "export_s": round(export_s, 2), "bundle_mb": round(bundle.stat().st_size / 2**20, 1),
                "import_s": round(import_s, 2), "import_phases_s": rep.seconds,
                # this process's CPU seconds: all the work on SQLite, the client's share on
                # PostgreSQL; next to wall time it shows how busy the machine was
                "export_cpu_s": round(export_cpu, 2), "import_cpu_s": round(import_cpu, 2),
                "checksum": exp.checksum}
    finally:
        for d in drops:
            d()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="hwcost-bench-") as d:
        for backend in args.backends.split(","):
            print(f"[{backend}] building {args.rows:,} rows ...", file=sys.stderr, flush=True)
            results.append(run_backend(backend, args.rows, Path(d)))
    cols = ["backend", "rows", "build_s", "model_table_rows", "fetch_model_table_ms", "export_s",
            "export_cpu_s", "bundle_mb", "import_s", "import_cpu_s"]
    header = "| " + " | ".join(cols) + " |"
    lines = [header, "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in results]
    targets = []
    for r in results:
        for name, (goal, unit) in GOALS.items():
            value = r[f"{name}_{'ms' if unit == 'ms' else 's'}"]
            met = "met" if value < goal else "missed"
            targets.append(f"target: {r['backend']}_{name} = {value} {unit} (goal < {goal:g}) {met}")
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "store.json").write_text(json.dumps({"results": results, "env": env,
                                                    "targets": targets}, indent=2) + "\n")
    (RESULTS / "store.md").write_text(
        "# Store benchmark\n\n`.venv/bin/python bench/store.py` (source /tmp/pgenv first)\n\n"
        + "\n".join(lines) + f"\n\nenv: {json.dumps(env)}\n\n" + "\n".join(targets) + "\n")
    print("\n".join(lines))
    print("\n".join(targets))


if __name__ == "__main__":
    main()
