"""Fleet claim throughput: how many campaign tasks a second can workers claim, measure and
close through one shared store, and are any claimed twice? (issue 16)

1. **No-op measurement, 32 processes, local PostgreSQL.** A synthetic campaign (real schema,
   real claim / heartbeat / one-transaction-per-unit code: ``hwcost.fleet_worker.work``); each
   process claims units until none is left and "measures" them instantly (it still writes one
   measurement row per task). Side by side: units of 16 configs (a 2-slot subgraph with 4 CPU
   precisions, the demo model's common case) and units of 1 config (worst case: one claim per
   task, as the issue's baseline of 42 tasks/s), and SQLite with 4 processes for reference.
2. **Real measurements for a minute.** ``hwcost profile --worker`` processes on the demo model
   (every CPU precision, default timing) share a PostgreSQL campaign for 60 s, then are
   stopped; tasks closed per second and duplicates. 4 processes of 1 thread, not 32: this
   machine has 2 cores, and 32 timing processes would measure contention, not the queue.

Duplicates = task ids handed to more than one worker + measurement rows beyond one per task.

    source /tmp/pgenv   # HWCOST_TEST_PG: an admin URL that may CREATE DATABASE
    python bench/fleet.py [--procs 32] [--units 400] [--real-seconds 60]

Writes bench/results/fleet.json and fleet.md; ends with the target lines.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hwcost import fleet_worker  # noqa: E402
from hwcost.device import DeviceInfo  # noqa: E402
from hwcost.store import MeasurementIn, SlotInfo, SubgraphInfo, Unit, open_store  # noqa: E402
from tests.synthetic import scratch_pg_database  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEV = DeviceInfo("cpu", "Fleet bench CPU", 1, ("avx2",), {"torch": "0"})
PRECS = ["fp32", "bf16", "int8", "fp8_e4m3"]
SHAPE = "batch=1,seq=128,phase=prefill"
CTX = mp.get_context("fork")


def _campaign(url: str, n_units: int, slots: int) -> tuple[int, int]:
    import itertools

    sigs = [f"bench{i:05d}" for i in range(n_units)]
    cfgs = [",".join(c) for c in itertools.product(PRECS, repeat=slots)] if slots else ["fp32"]
    n_slots = max(slots, 1)
    with open_store(url) as s:
        s.put_device(DEV)
        s.upsert_subgraphs([SubgraphInfo(g, "Block", tuple(SlotInfo("Linear", 8, 8)
                                                            for _ in range(n_slots))) for g in sigs])
        cid = s.ensure_campaign("bench", device=DEV.fingerprint, model=None)
        n = s.add_tasks(cid, [(g, SHAPE, c) for g in sigs for c in cfgs])
    return cid, n


def _noop_worker(url: str, cid: int, name: str, log_path: str, start: float) -> None:
    with open_store(url) as s, open(log_path, "w") as log:
        def measure(unit: Unit):
            log.write("".join(f"{t.id}\n" for t in unit.tasks))
            return [MeasurementIn(DEV.fingerprint, t.signature, t.shape, t.config, 10.0, 0.1, 5,
                                  host=name) for t in unit.tasks], {}

        time.sleep(max(0.0, start - time.time()))
        fleet_worker.work(s, cid, name, measure, stale_after_s=60.0)
    os._exit(0)


def run_noop(url: str, procs: int, n_units: int, slots: int, tmp: Path) -> dict:
    cid, n = _campaign(url, n_units, slots)
    start = time.time() + 2.0  # every process connected and waiting before the clock starts
    ps = [CTX.Process(target=_noop_worker, args=(url, cid, f"p{i}", str(tmp / f"p{i}.log"), start))
          for i in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    wall = time.time() - start
    ids = [int(x) for i in range(procs) for x in (tmp / f"p{i}.log").read_text().split()]
    dup_claims = sum(c - 1 for c in Counter(ids).values() if c > 1)
    with open_store(url) as s:
        rows = s.measurement_count()
        prog = s.campaign_progress(cid)
    return {"procs": procs, "tasks": n, "units": n_units, "tasks_per_unit": n // n_units,
            "wall_s": round(wall, 3), "tasks_per_s": round(n / wall, 1),
            "units_per_s": round(n_units / wall, 1), "done": prog.done,
            "duplicate_claims": dup_claims, "extra_rows": rows - len(set(ids)),
            "exit_codes": sorted({p.exitcode for p in ps})}


def run_real(url: str, procs: int, seconds: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HWCOST_DB": url}
    open_store(url).close()
    cmd = [sys.executable, "-m", "hwcost.app", "profile", "--threads", "1", "--campaign", "real",
           "--json"]
    ps = [subprocess.Popen([*cmd, "--worker", f"r{i}"], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
          for i in range(procs)]
    # the clock starts when the first task is closed (model loading and partitioning are
    # the workers' start-up, not the queue's)
    with open_store(url) as s:
        t0 = None
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                cid = s.campaign_id("real")
                p = s.campaign_progress(cid)
                if p.done:
                    t0, done0 = time.time(), p.done
                    break
            except Exception:  # noqa: BLE001 - the campaign does not exist yet
                pass
            time.sleep(0.2)
        if t0 is None:
            raise RuntimeError("no real-measurement worker closed a task within 10 minutes")
        time.sleep(seconds)
        p_end = s.campaign_progress(cid)
        t1 = time.time()
    for p in ps:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with open_store(url) as s:
        rows = s.measurement_count()
        final = s.campaign_progress(cid)
        by_worker = Counter(w for w in s.task_workers(cid).values() if w)
    return {"procs": procs, "seconds": round(t1 - t0, 1), "tasks_total": final.total,
            "tasks_closed": p_end.done - done0, "tasks_per_s": round((p_end.done - done0) / (t1 - t0), 2),
            "measurement_rows": rows, "done_tasks": final.done,
            # every stored row belongs to a done task, written with it in one transaction
            "duplicate_claims": abs(rows - final.done),
            "workers": dict(sorted(by_worker.items()))}


def _pg() -> tuple[str, callable]:
    admin = os.environ.get("HWCOST_TEST_PG")
    if not admin:
        raise SystemExit("set HWCOST_TEST_PG (source /tmp/pgenv) to benchmark PostgreSQL")
    return scratch_pg_database(admin, prefix="hwcost_fleet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=32)
    ap.add_argument("--units", type=int, default=400)
    ap.add_argument("--real-seconds", type=float, default=60.0)
    ap.add_argument("--real-procs", type=int, default=4)
    args = ap.parse_args()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, backend, procs, units, slots in [
                ("postgresql_16cfg_units", "postgresql", args.procs, args.units, 2),
                ("postgresql_1cfg_units", "postgresql", args.procs, args.units * 4, 0),
                ("sqlite_16cfg_units", "sqlite", 4, args.units, 2)]:
            d = Path(tmp) / label
            d.mkdir()
            url, drop = _pg() if backend == "postgresql" else (f"sqlite:///{d}/s.db", lambda: None)
            try:
                runs[label] = {"backend": backend, **run_noop(url, procs, units, slots, d)}
            finally:
                drop()
            print(f"{label}: {runs[label]}", flush=True)
        url, drop = _pg()
        try:
            real = run_real(url, args.real_procs, args.real_seconds)
        finally:
            drop()
        print(f"real: {real}", flush=True)

    head = runs["postgresql_16cfg_units"]
    rows = [{"run": k, "backend": r["backend"], "procs": r["procs"], "tasks": r["tasks"],
             "tasks/unit": r["tasks_per_unit"], "wall_s": r["wall_s"], "tasks/s": r["tasks_per_s"],
             "units/s": r["units_per_s"], "dup": r["duplicate_claims"] + r["extra_rows"]}
            for k, r in runs.items()]
    rows.append({"run": "real_demo_measurements", "backend": "postgresql", "procs": real["procs"],
                 "tasks": real["tasks_closed"], "tasks/unit": "-", "wall_s": real["seconds"],
                 "tasks/s": real["tasks_per_s"], "units/s": "-", "dup": real["duplicate_claims"]})
    cols = list(rows[0])
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    ratio = head["tasks_per_s"] / 42.0
    dups = sum(r["duplicate_claims"] + r["extra_rows"] for r in runs.values()) + \
        real["duplicate_claims"]
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    summary = [f"# bench/fleet.py ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
               f"{os.cpu_count()} CPUs {cpu}, shared machine, load average {load:.1f} at the end)",
               "", *table, "",
               f"PostgreSQL, {head['procs']} processes, 16-config units: {head['tasks_per_s']} tasks/s "
               f"({ratio:.0f}x the issue's 42 tasks/s, which claimed one task at a time before this "
               f"change, 16 processes, at another time); one-config units (one claim per task) "
               f"here: {runs['postgresql_1cfg_units']['tasks_per_s']} tasks/s.",
               f"Real demo-model measurements ({real['procs']} workers x 1 thread, "
               f"{real['seconds']} s): {real['tasks_per_s']} tasks/s, per worker {real['workers']}."]
    targets = [
        f"target: fleet_claims_per_s_postgresql = {head['tasks_per_s']} tasks/s (goal >= 1000) "
        f"{'met' if head['tasks_per_s'] >= 1000 else 'missed'}",
        f"target: fleet_duplicate_claims = {dups} count (goal == 0) {'met' if dups == 0 else 'missed'}",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet.json").write_text(json.dumps({"noop": runs, "real": real, "targets": targets},
                                                   indent=2) + "\n")
    (RESULTS / "fleet.md").write_text("\n".join(summary + ["", *targets]) + "\n")
    print("\n".join(summary))
    print()
    print("\n".join(targets))


if __name__ == "__main__":
    main()
