"""``hwcost profile MODEL --ray``: one campaign worker per accelerator of a Ray cluster.

The driver connects to a cluster (``address``; none starts a local one on this machine),
counts its accelerators (Ray resource ``GPU`` for cuda, ``HPU`` for hpu, CPU slots of
``threads`` CPUs each for cpu) and starts one Ray task per accelerator. Each task runs a
normal ``hwcost profile MODEL --worker NAME`` in a subprocess on its node (Ray pins the task
to its accelerator through ``CUDA_VISIBLE_DEVICES`` / ``HABANA_VISIBLE_MODULES``), claiming
from the shared PostgreSQL store; the driver follows the campaign in the store and shows a
progress bar. The store URL reaches the workers through the ``HWCOST_DB`` environment
variable, never a command line (where other users of a node could read its password).

Ray is an optional dependency (``pip install 'hwcost[ray]'``); nothing here imports it until
a launch.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from hwcost.errors import HwcostError, StoreError, first_line

RESOURCE = {"cuda": "GPU", "hpu": "HPU", "cpu": "CPU"}


class RayUnavailable(HwcostError):
    """Ray is not installed, or the cluster cannot be reached or has no matching slots."""


@dataclass(frozen=True)
class WorkerOutcome:
    """What one Ray worker reported: its ``hwcost profile --json`` report, or its error."""

    name: str
    node: str
    returncode: int
    measured: int = 0
    failed: int = 0
    error: str = ""


@dataclass
class RayReport:
    """The launch: campaign, workers and what the campaign still needs."""

    campaign: str
    address: str
    resource: str
    workers: list[WorkerOutcome] = field(default_factory=list)
    left: dict = field(default_factory=dict)
    note: str = ""
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def default_campaign(model: str | None, device: str) -> str:
    """A campaign name every launch of the same model and device kind shares (so a second
    launch resumes the first)."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", (model or "demo").rstrip("/").split("/")[-1]) or "model"
    return f"ray-{base}-{device.split(':')[0]}"


def _run_worker(args: list[str], env: dict[str, str], name: str) -> dict:
    """Inside a Ray task: run one ``hwcost profile --worker`` and return its outcome."""
    env = {**os.environ, **env, "HWCOST_HOST": env.get("HWCOST_HOST") or
           f"{socket.gethostname()}-{name}"}
    proc = subprocess.run([sys.executable, "-m", "hwcost.app", *args, "--worker", name, "--json"],
                          env=env, capture_output=True, text=True)
    out = {"name": name, "node": socket.gethostname(), "returncode": proc.returncode}
    if proc.returncode == 0:
        try:
            rep = json.loads(proc.stdout)
            out.update(measured=int(rep.get("measured", 0)), failed=int(rep.get("failed", 0)))
        except ValueError:
            out["error"] = "worker printed no JSON report"
    else:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        out["error"] = lines[-1][:300] if lines else f"exit code {proc.returncode}"
    return out


def launch(model: str | None, profile_args: Sequence[str], *, db_url: str, device: str,
           campaign: str, address: str | None = None, threads: int | None = None,
           max_workers: int | None = None, progress: bool = False,
           local_cpus: int | None = None) -> RayReport:
    """Start one worker per accelerator of the Ray cluster at ``address`` and wait for them.

    ``profile_args`` are the ``hwcost profile`` arguments every worker gets (model, shapes,
    precisions, timing options; not ``--worker``/``--db``). ``local_cpus`` sizes a local
    cluster started here (tests).
    """
    from hwcost.fleet_worker import what_is_left
    from hwcost.store import STALE_AFTER_S, open_store, redact_urls

    if not db_url.startswith("postgres"):
        raise StoreError("--ray workers on many nodes share one store: give a PostgreSQL URL "
                         "(--db postgresql+psycopg://USER:PW@HOST/DB or $HWCOST_DB)")
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'hwcost[ray]'") from None
    kind = device.split(":")[0]
    resource = RESOURCE.get(kind)
    if resource is None:
        raise RayUnavailable(f"--ray launches cpu, cuda or hpu workers, not {device!r}")
    start = time.perf_counter()
    open_store(db_url).close()  # create or upgrade once here, not in every worker at once
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=local_cpus, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False, object_store_memory=80 * 1024 * 1024)
    except Exception as e:  # noqa: BLE001 - Ray raises many types; the user needs one line
        raise RayUnavailable(f"cannot start or reach Ray at {address or 'a local cluster'}: "
                             f"{redact_urls(first_line(e))}") from None
    try:
        per = float(threads or 1) if kind == "cpu" else 1.0
        total = ray.cluster_resources().get(resource, 0.0)
        n = int(total // per)
        if max_workers:
            n = min(n, max_workers)
        if n < 1:
            raise RayUnavailable(f"the Ray cluster has no {resource} "
                                 f"{'slots of ' + str(int(per)) + ' CPUs' if kind == 'cpu' else ''}"
                                 f"for {device} workers (it has {total:g})")
        opts = ({"num_cpus": per} if kind == "cpu" else
                {"num_gpus": 1, "num_cpus": 0} if kind == "cuda" else
                {"resources": {"HPU": 1}, "num_cpus": 0})
        task = ray.remote(max_retries=0, **opts)(_run_worker)
        args = ["profile", *([model] if model else []), *profile_args, "--device", device,
                "--campaign", campaign]
        env = {"HWCOST_DB": db_url}
        if os.environ.get("PYTHONPATH"):  # a source checkout (tests); installs need none
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        refs = [task.remote(args, env, f"ray{i}") for i in range(n)]
        report = RayReport(campaign, address or "local", resource)
        _follow(ray, refs, db_url, campaign, progress)
        report.workers = [WorkerOutcome(**o) for o in ray.get(refs)]
    finally:
        ray.shutdown()
    with open_store(db_url, read_only=True) as store:
        cid = store.campaign_id(campaign)
        left = store.campaign_progress(cid)
        live = store.other_claims(cid, "", suspect_after_s=STALE_AFTER_S).live
    report.left = left.to_dict()
    report.note = what_is_left(campaign, left, live)
    report.elapsed_s = round(time.perf_counter() - start, 2)
    return report


def _follow(ray, refs: list, db_url: str, campaign: str, progress: bool) -> None:
    """Wait for the workers, showing the campaign's progress from the store."""
    from tqdm import tqdm

    from hwcost.store import open_store

    pending = list(refs)
    with open_store(db_url, read_only=True) as store, \
            tqdm(desc=f"{campaign} [{len(refs)} Ray workers]", unit="task", file=sys.stderr,
                 disable=not progress, dynamic_ncols=True) as bar:
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            try:
                p = store.campaign_progress(store.campaign_id(campaign))
            except StoreError:
                continue  # the workers have not created the campaign yet
            bar.total, bar.n = p.total, p.done + p.failed + p.cancelled
            bar.refresh()
