"""Sensitivity tables in the store: round trip on every backend, keys, bad rows."""

from __future__ import annotations

import pytest
from hwcost.sensitivity.records import SensitivityRow, SensitivityTable

from hwcost.errors import InvalidMeasurement, SensitivityError
from hwcost.quantizer import DEFAULT, GAUDI2
from hwcost.store import ManifestItem, ModelRef, SlotInfo, SubgraphInfo


def _model(store) -> ModelRef:
    sg = SubgraphInfo("sig-mlp", "LlamaMLP", (SlotInfo("Linear", 8, 16), SlotInfo("Linear", 16, 8)))
    store.put_model("fp-model", "tiny", [sg], [ManifestItem(0, "sig-mlp", ("mlp.up", "mlp.down"))])
    return store.model("fp-model")


def _table(calib="c" * 64, method="taylor", scale=1.0, checkpoint="d" * 32,
           quantizer=DEFAULT.key) -> SensitivityTable:
    rows = [SensitivityRow(layer, p, scale * v, 0.1 * scale * v, 32)
            for layer, base in (("mlp.up", 1e-5), ("mlp.down", 3e-4))
            for p, v in (("bf16", base / 100), ("int8", base))]
    return SensitivityTable(rows, method, calib, checkpoint, quantizer)


def test_round_trip(store):
    mid = _model(store)
    t = _table()
    assert store.put_sensitivity_table(mid, t) == 4
    back = store.sensitivity_table(mid)
    assert back == t
    assert back.predict({"mlp.up": "int8", "mlp.down": "bf16"}) == pytest.approx(1e-5 + 3e-6)


def test_keys_method_and_calibration(store):
    mid = _model(store)
    store.put_sensitivity_table(mid, _table("a" * 64))
    store.put_sensitivity_table(mid, _table("b" * 64, scale=2.0))
    store.put_sensitivity_table(mid, _table("b" * 64, method="noise", scale=3.0))
    assert store.sensitivity_table(mid, calib_fingerprint="a" * 64).get("mlp.up", "int8").loss_mse == 1e-5
    assert store.sensitivity_table(mid).calib_fingerprint == "b" * 64  # latest calibration set
    assert store.sensitivity_table(mid, "noise").get("mlp.up", "int8").loss_mse == pytest.approx(3e-5)
    store.put_sensitivity_table(mid, _table("a" * 64, scale=5.0))  # same key again: replaced, not doubled
    again = store.sensitivity_table(mid, calib_fingerprint="a" * 64)
    assert len(again.rows) == 4 and again.get("mlp.up", "int8").loss_mse == pytest.approx(5e-5)


def test_checkpoints_and_quantizers_are_kept_apart(store):
    mid = _model(store)
    store.put_sensitivity_table(mid, _table(checkpoint="1" * 32))
    store.put_sensitivity_table(mid, _table(checkpoint="2" * 32, scale=7.0))
    store.put_sensitivity_table(mid, _table(checkpoint="1" * 32, quantizer=GAUDI2.key, scale=3.0))
    assert len(store.sensitivity_table(mid).rows) == 4  # one table, never a mix
    one = store.sensitivity_table(mid, checkpoint="1" * 32, quantizer=DEFAULT.key)
    two = store.sensitivity_table(mid, checkpoint="2" * 32)
    gaudi = store.sensitivity_table(mid, checkpoint="1" * 32, quantizer=GAUDI2.key)
    assert one.get("mlp.up", "int8").loss_mse == pytest.approx(1e-5)
    assert two.get("mlp.up", "int8").loss_mse == pytest.approx(7e-5)
    assert gaudi.get("mlp.up", "int8").loss_mse == pytest.approx(3e-5)
    assert gaudi.quantizer == "e4m3=240,e5m2=57344,w=per_channel,a=per_token"
    with pytest.raises(SensitivityError, match="checkpoint 333333333333"):
        store.sensitivity_table(mid, checkpoint="3" * 32)
    with pytest.raises(SensitivityError, match="needs its checkpoint digest"):
        store.put_sensitivity_table(mid, _table(checkpoint=""))


def test_bad_rows_store_nothing(store):
    mid = _model(store)
    rows = _table().rows
    bad = SensitivityTable([*rows[:2], SensitivityRow("mlp.down", "int8", float("nan"), 0.0, 3)],
                           "taylor", "c" * 64, "d" * 32, DEFAULT.key)
    with pytest.raises(InvalidMeasurement):
        store.put_sensitivity_table(mid, bad)
    with pytest.raises(SensitivityError, match="no taylor sensitivity table for model 'tiny'"):
        store.sensitivity_table(mid)
    with pytest.raises(SensitivityError, match="needs its calibration fingerprint"):
        store.put_sensitivity_table(mid, SensitivityTable(rows, "taylor", "", "d" * 32, DEFAULT.key))


def test_table_lookup_errors():
    t = _table()
    with pytest.raises(SensitivityError, match="no sensitivity for layer 'mlp.up' at fp8_e4m3"):
        t.predict({"mlp.up": "fp8_e4m3"})
    with pytest.raises(ValueError, match="unknown sensitivity method"):
        SensitivityTable([], "magic")
    assert SensitivityTable.from_dict(t.to_dict()) == t
