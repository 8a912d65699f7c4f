"""The sensitivity table: s_l(p) with its standard error per (layer, precision). The record
itself is the store's (``hwcost.store.records``: what crosses the store's boundary); a store
writes one with ``Store.put_sensitivity_table`` and reads one with ``Store.sensitivity_table``."""

from __future__ import annotations

from hwcost.store.records import SensitivityRow, SensitivityTable

__all__ = ["SensitivityRow", "SensitivityTable"]
