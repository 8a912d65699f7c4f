"""Bundles carry checkpoint identity: the checkpoint table and the sensitivity rows' digest
and quantizer key travel and are validated; a bundle written before they existed (schema 2 or older)
still reads, its rows as checkpoint 'unknown'."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hwcost.errors import BundleInvalid
from hwcost.quantizer import DEFAULT
from hwcost.store import open_store
from hwcost.store.bundle import META_KEY, read_bundle, write_bundle
from hwcost.store.exchange import export_bundle, import_bundle, read_tables
from tests.synthetic import small_store


def _sens(store) -> set[tuple]:
    t = store.sensitivity_table(store.models()[0].fingerprint)
    return {(r.layer, r.precision, t.checkpoint, t.quantizer, r.loss_mse) for r in t.rows}


def test_round_trip_keeps_checkpoints_and_quantizers(store, second_url, tmp_path):
    small_store(store)
    path = tmp_path / "b.parquet"
    export_bundle(store, path)
    b = read_bundle(path)
    assert b.tables["checkpoint"].num_rows == 1
    assert set(b.tables["sensitivity"].column("quantizer").to_pylist()) == {DEFAULT.key}
    with open_store(second_url) as dst:
        rep = import_bundle(dst, path)
        assert rep.tables["checkpoint"].new == 1
        assert _sens(dst) == _sens(store)
        [src_ck], [dst_ck] = store.checkpoints(), dst.checkpoints()
        assert (dst_ck.digest, dst_ck.name, dst_ck.source) == (src_ck.digest, src_ck.name,
                                                               src_ck.source)



def test_checkpoint_fields_are_validated(store, tmp_path):
    small_store(store)
    tables = read_tables(store)
    sens = tables["sensitivity"]
    i = sens.schema.get_field_index("checkpoint")
    orphan = sens.set_column(i, "checkpoint", pa.array(["f" * 32] * sens.num_rows))
    write_bundle({**tables, "sensitivity": orphan}, tmp_path / "orphan.parquet")
    with pytest.raises(BundleInvalid, match="name checkpoint 'ffffffffffff', which the bundle "
                                            "does not hold"):
        read_bundle(tmp_path / "orphan.parquet")
    i = sens.schema.get_field_index("quantizer")
    odd = sens.set_column(i, "quantizer", pa.array(["e4m3=448.0,e5m2=57344,w=per_channel,"
                                                    "a=per_token"] * sens.num_rows))
    write_bundle({**tables, "sensitivity": odd}, tmp_path / "odd.parquet")
    with pytest.raises(BundleInvalid, match="quantizer .* is not canonical"):
        read_bundle(tmp_path / "odd.parquet")
    ck = tables["checkpoint"]
    blank = ck.set_column(ck.schema.get_field_index("digest"), "digest", pa.array([""]))
    write_bundle({**tables, "checkpoint": blank}, tmp_path / "blank.parquet")
    with pytest.raises(BundleInvalid, match="has no digest"):
        read_bundle(tmp_path / "blank.parquet")


def test_schema_2_bundle_reads_as_unknown_checkpoint(store, second_url, tmp_path):
    small_store(store)
    tables = read_tables(store)
    tables["checkpoint"] = tables["checkpoint"].slice(0, 0)
    new = tmp_path / "v2.parquet"
    write_bundle(tables, new, schema_version=2)  # the checksum then covers v2 content only
    # drop what schema 2 did not have: the checkpoint record and the two sensitivity columns
    t = pq.read_table(new)
    meta = json.loads(t.schema.metadata[META_KEY])
    drop = ["sensitivity_checkpoint", "sensitivity_quantizer",
            *[n for n in t.column_names if n.startswith("checkpoint_")]]
    t = t.filter(pc.not_equal(t.column("record"), "checkpoint")).drop_columns(drop)
    del meta["tables"]["checkpoint"]
    old = tmp_path / "v1.parquet"
    pq.write_table(t.replace_schema_metadata({META_KEY: json.dumps(meta)}), old)
    b = read_bundle(old)
    assert b.schema_version == 2
    assert set(b.tables["sensitivity"].column("checkpoint").to_pylist()) == {"unknown"}
    with open_store(second_url) as dst:
        import_bundle(dst, old)
        rows = _sens(dst)
        assert rows and {(c, q) for _, _, c, q, _ in rows} == {("unknown", "unknown")}
        assert dst.checkpoints() == []
