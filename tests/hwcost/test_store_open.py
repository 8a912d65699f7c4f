"""Opening stores: many processes creating one new store at once create it exactly once."""

from __future__ import annotations

import multiprocessing as mp

from hwcost.store import open_store
from hwcost.store.schema import SCHEMA_VERSION


def _open(url: str) -> str:
    try:
        with open_store(url) as s:
            return str(s.schema_version())
    except Exception as e:  # reported to the parent, which asserts on it
        return f"{type(e).__name__}: {e}"


def test_concurrent_first_open_creates_the_store_once(store_url):
    # store_url names an empty database (no tables yet) on each backend
    with mp.get_context("spawn").Pool(6) as pool:
        results = pool.map(_open, [store_url] * 6)
    assert results == [str(SCHEMA_VERSION)] * 6
    with open_store(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
