"""Checkpoint identity (schema 2 -> 3; a v1 store goes through every migration): a real v1
store, with rows in every table, upgrades in place on SQLite and PostgreSQL with no row lost;
rows from before digests existed read as checkpoint 'unknown' and are never matched to a
checkpoint loaded now."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, text

from hwcost.app.main import cli
from hwcost.errors import HwcostError, SensitivityError
from hwcost.quantizer import DEFAULT
from hwcost.store import SensitivityRow, SensitivityTable, open_store
from hwcost.store.opening import _make_engine
from hwcost.store.schema import SCHEMA_VERSION, Plan, Sensitivity, Validation
from tests.hwcost.schema_v1 import V1  # the frozen v1 layout

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
V1_TABLES = ("meta", "device", "subgraph", "model", "manifest_entry", "campaign", "campaign_task",
             "measurement", "model_latency", "sensitivity", "plan", "validation")


def _v1_store(url: str) -> dict[str, int]:
    """Create a schema-1 store with rows in every table; returns rows per table."""
    eng = _make_engine(url)
    V1.metadata.create_all(eng)
    t = V1.metadata.tables
    slots = json.dumps([{"op": "Linear", "in_features": 4, "out_features": 4, "bias": False,
                         "macs_per_token": 16, "weight_params": 16}])
    with eng.begin() as c:
        c.execute(insert(t["meta"]), [{"key": "schema_version", "value": "1"}])
        c.execute(insert(t["device"]), [{"id": 1, "fingerprint": "dev1", "kind": "cpu",
                                         "name": "CPU", "flags": "[]", "software": "{}",
                                         "peaks": "{}", "source": "local", "created_at": T0}])
        c.execute(insert(t["subgraph"]), [{"id": 1, "signature": "sig1", "kind": "Linear",
                                           "n_slots": 1, "slots": slots, "extra": "{}",
                                           "created_at": T0}])
        c.execute(insert(t["model"]), [{"id": 1, "fingerprint": "arch1", "name": "m",
                                        "n_subgraphs": 2, "n_layers": 2, "created_at": T0}])
        c.execute(insert(t["manifest_entry"]), [
            {"id": i + 1, "model_id": 1, "position": i, "subgraph_id": 1,
             "layer_names": json.dumps([f"l{i}"])} for i in range(2)])
        c.execute(insert(t["campaign"]), [{"id": 1, "name": "c1", "model_id": 1, "device_id": 1,
                                           "shapes": "[]", "precisions": "[]",
                                           "created_at": T0}])
        c.execute(insert(t["campaign_task"]), [{"id": 1, "campaign_id": 1, "subgraph_id": 1,
                                                "shape": "batch=1,seq=8,phase=prefill",
                                                "config": "fp32", "state": "done"}])
        c.execute(insert(t["measurement"]), [
            {"id": i + 1, "device_id": 1, "subgraph_id": 1, "shape": "batch=1,seq=8,phase=prefill",
             "config": cfg, "median_us": 10.0 + i, "spread_us": 0.5, "n_samples": 5,
             "measured_at": T0, "host": "h", "tool_version": "0.1"}
            for i, cfg in enumerate(("fp32", "int8"))])
        c.execute(insert(t["model_latency"]), [{
            "id": 1, "model_id": 1, "device_id": 1, "shape": "batch=1,seq=8,phase=prefill",
            "config_hash": "all:fp32", "config": "{}", "median_us": 30.0, "spread_us": 1.0,
            "n_samples": 5, "measured_at": T0, "host": "h", "tool_version": "0.1"}])
        c.execute(insert(t["sensitivity"]), [
            {"id": i + 1, "model_id": 1, "calib_fingerprint": "cal", "layer": f"l{i}",
             "precision": "int8", "loss_mse": 1e-4 * (i + 1), "stderr": 1e-5, "method": "taylor",
             "n_samples": 8, "created_at": T0} for i in range(2)])
        c.execute(insert(t["plan"]), [{"id": 1, "model_id": 1, "device_id": 1,
                                       "shape": "batch=1,seq=8,phase=prefill", "objective": "time",
                                       "body": "{}", "created_at": T0}])
        c.execute(insert(t["validation"]), [{"id": 1, "plan_id": 1, "device_id": 1,
                                             "baseline_us": 30.0, "plan_us": 20.0,
                                             "measured_speedup": 1.5, "host": "h",
                                             "created_at": T0}])
        counts = {n: c.execute(select(func.count()).select_from(t[n])).scalar_one()
                  for n in V1_TABLES}
        if c.dialect.name == "postgresql":  # rows were given ids: move the sequences on, as
            for n in V1_TABLES[1:]:          # inserts through the store would have
                c.execute(text(f"SELECT setval(pg_get_serial_sequence('{n}', 'id'), "
                               f"(SELECT MAX(id) FROM {n}))"))
    eng.dispose()
    return counts


def test_v1_store_upgrades_in_place_with_every_row(store_url):
    before = _v1_store(store_url)
    assert all(before.values())
    with open_store(store_url, upgrade=False) as s:
        assert s.schema_version() == 1
    with open_store(store_url) as s:  # opening for writing upgrades
        assert s.schema_version() == SCHEMA_VERSION
        with s.engine.connect() as c:
            after = {n: c.execute(text(f"SELECT COUNT(*) FROM {n}")).scalar_one()
                     for n in V1_TABLES}
            assert after == before  # no row lost
            assert c.execute(text("SELECT COUNT(*) FROM checkpoint")).scalar_one() == 0
        with s.session() as sess:
            sens = list(sess.scalars(select(Sensitivity).order_by(Sensitivity.id)))
            assert [(r.id, r.layer, r.loss_mse, r.checkpoint, r.quantizer) for r in sens] == [
                (1, "l0", 1e-4, "unknown", "unknown"), (2, "l1", 2e-4, "unknown", "unknown")]
            assert sess.scalars(select(Plan.checkpoint)).all() == ["unknown"]
            assert sess.scalars(select(Plan.quantizer)).all() == ["unknown"]
            assert sess.scalars(select(Validation.checkpoint)).all() == ["unknown"]
        # the old rows stay readable as what they are...
        assert s.sensitivity_table("arch1", checkpoint="unknown").predict({"l0": "int8"}) == 1e-4
        # ...but are never taken for a checkpoint loaded now
        with pytest.raises(SensitivityError, match="checkpoint abcdef"):
            s.sensitivity_table("arch1", checkpoint="abcdef" * 5, quantizer=DEFAULT.key)
        assert s.plans_for(1, 1, "batch=1,seq=8", checkpoint="abcdef" * 5) == []
        # the new key lets a real checkpoint's table sit beside the old rows
        s.put_checkpoint(1, "abcdef" * 5, "m", "test")
        new = SensitivityTable([SensitivityRow(f"l{i}", "int8", 5e-4, 1e-5, 8) for i in range(2)],
                               "taylor", "cal", "abcdef" * 5, DEFAULT.key)
        assert s.put_sensitivity_table("arch1", new) == 2
        assert len(s.sensitivity_table("arch1", checkpoint="unknown").rows) == 2
        assert s.sensitivity_table("arch1", checkpoint="abcdef" * 5).predict({"l0": "int8"}) == 5e-4
    # one real checkpoint beside 'unknown' rows: the planner takes the real one without asking
    listing = CliRunner().invoke(cli, ["db", "ls", "--db", store_url, "--json"])
    cks = json.loads(listing.output)["models"][0]["checkpoints"]
    assert sorted((c["digest"], c["tables"], c["plans"], c["validations"]) for c in cks) == [
        ("abcdef" * 5, 1, 0, 0), ("unknown", 1, 1, 1)]


def test_two_real_checkpoints_need_a_choice(store_url):
    from hwcost.planner.problem import _sensitivity_table

    _v1_store(store_url)
    with open_store(store_url) as s:
        for digest, v in (("a" * 32, 1e-4), ("b" * 32, 9e-4)):
            s.put_checkpoint(1, digest)
            s.put_sensitivity_table("arch1", SensitivityTable(
                [SensitivityRow(f"l{i}", "int8", v, 0.0, 8) for i in range(2)], "taylor", "cal",
                digest, DEFAULT.key))
        model = s.model("arch1")
        with pytest.raises(HwcostError, match="tables of 2 checkpoints .*--checkpoint DIGEST"):
            _sensitivity_table(s, model, "taylor", None, None)
        sens, key = _sensitivity_table(s, model, "taylor", "bbbb", None)
        assert key["checkpoint"] == "b" * 32 and sens[("l0", "int8")] == 9e-4
