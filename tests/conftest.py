"""Shared fixtures. ``store_url`` / ``store`` run each test once per real backend:
an SQLite file and, where ``HWCOST_TEST_PG`` names a server (CI always does), a fresh
PostgreSQL database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

PG_ENV = "HWCOST_TEST_PG"  # e.g. postgresql+psycopg://hwcost:hwcost@127.0.0.1:5432/postgres

# The suite runs on a shared 2-core machine that is often busy: timings are judged (load,
# drift, spread) and labelled, but no test waits for a quiet machine. Tests about stability
# pass their own StabilityPolicy (tests/profiles/test_stability.py).
os.environ.setdefault("HWCOST_STABILITY", "report")


def _pin_worker_to_one_cpu() -> None:
    """Under pytest-xdist (``-n``), each worker runs on a CPU of its own: torch, the timing
    harness and every ``hwcost`` subprocess a test starts then use one thread (the CPU
    backend's default is the CPUs this process may use), instead of two workers each
    spinning two threads on two cores (unpinned, a real-timing fixture read a 64-wide MLP at
    36 ms and a learned-model test failed on it). Done before anything imports torch, whose
    thread pool reads the affinity once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})


_pin_worker_to_one_cpu()


def _pg_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url and os.environ.get("CI"):
        raise RuntimeError(f"CI must set {PG_ENV} so the store tests run on PostgreSQL")
    return url


def make_pg_database() -> tuple[str, callable]:
    """Create an empty PostgreSQL database; return its URL and a function that drops it."""
    from tests.synthetic import scratch_pg_database

    return scratch_pg_database(_pg_admin_url(), prefix="hwcost_t")


def _backends() -> list:
    params = [pytest.param("sqlite", id="sqlite")]
    params.append(pytest.param("postgresql", id="postgresql",
                               marks=pytest.mark.skipif(
                                   not os.environ.get(PG_ENV) and not os.environ.get("CI"),
                                   reason=f"{PG_ENV} not set")))
    return params


def _empty_url(backend: str, path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{path}"
        return
    if backend == "sqlite-memory":
        yield "sqlite://"
        return
    url, drop = make_pg_database()
    try:
        yield url
    finally:
        drop()


@pytest.fixture(params=_backends())
def store_url(request, tmp_path) -> Iterator[str]:
    """URL of an empty store on each backend."""
    yield from _empty_url(request.param, tmp_path / "store.db")


@pytest.fixture(params=[pytest.param("sqlite-memory", id="sqlite-memory"), *_backends()])
def any_store_url(request, tmp_path) -> Iterator[str]:
    """URL of an empty store on every backend the ``Store`` protocol has: an SQLite file,
    in-memory SQLite (one connection per store) and PostgreSQL (the contract suite)."""
    yield from _empty_url(request.param, tmp_path / "store.db")


@pytest.fixture
def second_url(store_url, tmp_path) -> Iterator[str]:
    """A second empty store on the same backend as ``store_url``."""
    yield from _empty_url("sqlite" if store_url.startswith("sqlite") else "postgresql",
                          tmp_path / "second.db")


@pytest.fixture
def store(store_url):
    """An open, empty store on each backend."""
    from hwcost.store import open_store

    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """URL of an empty embedded store, for tests that need only one backend."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """An empty PostgreSQL database shared by the tests of one module (journeys that build
    on each other); skipped where no server is configured outside CI."""
    if not os.environ.get(PG_ENV) and not os.environ.get("CI"):
        pytest.skip(f"{PG_ENV} not set")
    url, drop = make_pg_database()
    try:
        yield url
    finally:
        drop()
