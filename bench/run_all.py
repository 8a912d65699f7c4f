"""Run every benchmark in bench/ and write bench/results/REPORT.md.

Each benchmark prints a table and ends with ``target: NAME = VALUE UNIT (goal OP LIMIT) met|missed``
lines; this script runs them one after another (never in parallel: they time things), keeps
their output, and collects the target lines, tables and plots into one report that names the
machine it ran on.

    python bench/run_all.py            # all benchmarks
    python bench/run_all.py store planner   # some of them (the others' last results are kept)
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = ["store", "fleet", "campaign", "stability", "additivity", "fallbacks", "sensitivity",
         "planner", "exports", "decode", "zoo"]
TARGET = re.compile(r"^target: (?P<name>\S+) = (?P<value>\S+) (?P<unit>.*?) ?"
                    r"\(goal (?P<op>\S+)(?: (?P<limit>[^)]+))?\) (?P<verdict>met|missed)$")


def machine() -> str:
    sys.path.insert(0, str(HERE.parent))
    from hwcost.device import local_device

    d = local_device("cpu").to_dict()
    soft = ", ".join(f"{k} {v}" for k, v in sorted(d["software"].items()))
    return (f"{d['name']} ({d['threads']} threads; flags {' '.join(d['flags'])}); "
            f"{platform.system()} {platform.release()}; {soft}")


def run(name: str) -> dict:
    script = HERE / f"{name}.py"
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=HERE.parent)
    wall = time.time() - t0
    lines = proc.stdout.splitlines()
    targets = [m.groupdict() for m in (TARGET.match(x.strip()) for x in lines) if m]
    (RESULTS / f"{name}.log").write_text(proc.stdout + ("\n--- stderr ---\n" + proc.stderr
                                                        if proc.returncode else ""))
    return {"name": name, "rc": proc.returncode, "wall_s": round(wall, 1), "targets": targets,
            "ran_at": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            "stderr_tail": proc.stderr.strip().splitlines()[-3:] if proc.returncode else []}


def report(runs: list[dict]) -> str:
    out = ["# hwcost benchmark report", "",
           f"Machine: {machine()}", "",
           "Every figure below was measured by `python bench/run_all.py` on this machine, one "
           "benchmark at a time; each section says when its benchmark ran and shows its own "
           "table.", "",
           "## Targets", "", "| benchmark | target | value | goal | verdict |",
           "|---|---|---|---|---|"]
    for r in runs:
        if r["rc"]:
            out.append(f"| {r['name']} | (benchmark failed, exit {r['rc']}) | | | missed |")
        for t in r["targets"]:
            out.append(f"| {r['name']} | {t['name']} | {t['value']} {t['unit']} | "
                       f"{t['op']} {t['limit'] or ''} | **{t['verdict']}** |")
    for r in runs:
        out += ["", f"## {r['name']} (ran {r.get('ran_at', '2026-11-22 08:47 UTC')}, "
                    f"{r['wall_s']} s)", ""]
        md = RESULTS / f"{r['name']}.md"
        if md.exists():
            out.append(md.read_text().strip())
        else:
            out.append(f"See `bench/results/{r['name']}.log`.")
        for png in sorted(RESULTS.glob(f"{r['name']}*.png")):
            out += ["", f"![{png.stem}]({png.name})"]
        if r["stderr_tail"]:
            out += ["", "```", *r["stderr_tail"], "```"]
    return "\n".join(out) + "\n"


def _merge_with_previous(runs: list[dict], all_names: list[str]) -> list[dict]:
    """Running some benchmarks again keeps the others' last results in the report."""
    path = RESULTS / "report.json"
    previous = {r["name"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    previous.update({r["name"]: r for r in runs})
    return [previous[n] for n in all_names if n in previous]


def main(argv: list[str]) -> int:
    if argv == ["--report"]:  # rewrite REPORT.md from the stored results, running nothing
        (RESULTS / "REPORT.md").write_text(report(json.loads((RESULTS / "report.json").read_text())))
        return 0
    names = argv or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    RESULTS.mkdir(exist_ok=True)
    runs = []
    for n in names:
        print(f"== {n}", flush=True)
        r = run(n)
        runs.append(r)
        for t in r["targets"]:
            goal = f"{t['op']} {t['limit']}" if t["limit"] else t["op"]
            print(f"target: {t['name']} = {t['value']} {t['unit']} (goal {goal}) {t['verdict']}")
        if r["rc"]:
            print(f"   failed (exit {r['rc']}): {' | '.join(r['stderr_tail'])}")
    runs = _merge_with_previous(runs, all_names=[n for n in ORDER if (HERE / f"{n}.py").exists()])
    (RESULTS / "REPORT.md").write_text(report(runs))
    (RESULTS / "report.json").write_text(json.dumps(runs, indent=2))
    print(f"wrote {RESULTS / 'REPORT.md'}")
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
