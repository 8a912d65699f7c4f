"""``hwcost db``: exact output of every command, errors included."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.store import open_store
from hwcost.store.exchange import read_bundle
from hwcost.store.schema import SCHEMA_VERSION as V
from tests.synthetic import small_store

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def sqlite_hash(url: str) -> str:
    path = Path(url.split("///", 1)[1])
    return hashlib.sha256(b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"))
                                   if p.exists())).hexdigest()


def test_every_db_command_has_help_and_docs():
    doc = (ROOT / "docs" / "cli.md").read_text()
    group = cli.commands["db"]
    assert group.help
    for name, cmd in group.commands.items():
        assert cmd.help and len(cmd.help) > 30, name
        assert f"hwcost db {name}" in doc, name
        assert run("db", name, "--help").exit_code == 0


def test_init_ls_on_an_empty_store(sqlite_url):
    r = run("db", "init", "--db", sqlite_url)
    assert r.output == f"store ready: {sqlite_url} (schema version {V})\n"
    r = run("db", "ls", "--db", sqlite_url)
    assert r.output == (f"schema version {V}; 0 subgraphs, 0 measurements\n\ndevices\n(none)\n\n"
                        "models (architectures; their checkpoints, by weights digest, below each)\n"
                        "(none)\n\ncoverage (distinct subgraphs of the model measured "
                        "on the device and shape)\n(none)\n")
    r = run("db", "ls", "--db", sqlite_url, "--json")
    assert json.loads(r.output) == {"schema_version": V, "n_subgraphs": 0, "n_measurements": 0,
                                    "devices": [], "models": [], "coverage": []}


def test_ls_summarises_devices_models_and_coverage(store_url):
    with open_store(store_url) as s:
        info = small_store(s)
    d = json.loads(run("db", "ls", "--db", store_url, "--json").output)
    assert (d["n_subgraphs"], d["n_measurements"]) == (3, info.n_measurements)
    assert [x["fingerprint"] for x in d["devices"]] == list(info.devices)
    assert all(x["measurements"] == 54 and x["shapes"] == 2 for x in d["devices"])
    ck = d["models"][0].pop("checkpoints")
    assert d["models"] == [{"fingerprint": info.model, "name": "synthetic-0", "n_subgraphs": 6,
                            "distinct": 3, "n_layers": 12}]
    assert [(c["name"], c["tables"], c["plans"], c["validations"]) for c in ck] == [
        ("synthetic-0", 1, 0, 0)]
    assert len(d["coverage"]) == 4
    assert all((c["measured"], c["distinct"], c["share"], c["measurements"]) == (3, 3, 1.0, 27)
               for c in d["coverage"])
    text = run("db", "ls", "--db", store_url).output
    assert text.startswith(f"schema version {V}; 3 subgraphs, {info.n_measurements} measurements\n")
    assert f"{info.devices[0]}  cpu   Synthetic cpu 0  local   54" in text
    assert f"\n  {ck[0]['digest'][:14]}  synthetic-0" in text  # the checkpoint, under its model


def test_export_import_and_conflict_report(store_url, tmp_path):
    with open_store(store_url) as s:
        info = small_store(s)
    out = tmp_path / "b.parquet"
    r = run("db", "export", "-o", str(out), "--db", store_url)
    checksum = read_bundle(out).checksum
    assert r.output == (f"exported {info.n_measurements} measurements, 2 devices, 3 subgraphs, "
                        f"1 models to {out} (sha256 {checksum[:16]})\n")
    r = run("db", "import", str(out), "--db", store_url)
    assert r.exit_code == 0
    assert r.output.splitlines()[-1] == "imported 0 new rows; no conflicts"
    assert "measurement     108   0    108        0            0         0" in r.output
    rep = json.loads(run("db", "import", str(out), "--db", store_url, "--json").output)
    assert rep["on_conflict"] == "keep" and rep["checksum"] == checksum
    assert rep["tables"]["measurement"]["identical"] == info.n_measurements
    # a bundle from a store whose one row differs: reported, kept by default
    with open_store(store_url) as s, s.session() as sess:
        from sqlalchemy import text
        sess.execute(text("UPDATE measurement SET median_us = median_us + 1 "
                          "WHERE id = (SELECT MIN(id) FROM measurement)"))
    r = run("db", "import", str(out), "--db", store_url)
    lines = r.output.splitlines()
    assert lines[-2] == "imported 0 new rows; 1 conflicting: 0 replaced by the bundle's, 1 kept " \
                        "(--on-conflict keep)"
    assert lines[-1].startswith("  conflict measurement (")
    r = run("db", "import", str(out), "--db", store_url, "--on-conflict", "replace")
    assert "1 conflicting: 1 replaced by the bundle's, 0 kept (--on-conflict replace)" in r.output
    r = run("db", "import", str(out), "--db", store_url)
    assert r.output.splitlines()[-1] == "imported 0 new rows; no conflicts"
    one = tmp_path / "one.parquet"
    r = run("db", "export", "--device", info.devices[0][:6], "-o", str(one), "--db", store_url)
    assert r.output.startswith(f"exported {info.n_measurements // 2} measurements, 1 devices")
    # a kind names the store's one local device of it, as plan and coverage accept it
    r = run("db", "export", "--device", "cpu", "-o", str(tmp_path / "x.parquet"), "--db",
            store_url)
    assert r.exit_code == 1 and "several cpu devices in the store" in r.output
    this_machine = f"sqlite:///{tmp_path / 'this.db'}"
    run("device", "--save", "--db", this_machine)
    r = run("db", "export", "--device", "cpu", "-o", str(tmp_path / "kind.parquet"), "--db",
            this_machine)
    assert r.output.startswith("exported 0 measurements, 1 devices"), r.output


def test_cli_errors_are_one_line_and_change_nothing(sqlite_url, tmp_path):
    with open_store(sqlite_url) as s:
        small_store(s)
    good = tmp_path / "good.parquet"
    run("db", "export", "-o", str(good), "--db", sqlite_url)
    nocol = tmp_path / "nocol.parquet"
    t = pq.read_table(good)
    pq.write_table(t.drop_columns(["measurement_config"]).replace_schema_metadata(t.schema.metadata),
                   nocol)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet")
    before = sqlite_hash(sqlite_url)
    cases = [
        (["db", "import", str(nocol)],
         "Error: invalid bundle nocol.parquet: missing column measurement_config\n"),
        (["db", "import", str(tmp_path / "none.parquet")],
         f"Error: no bundle file '{tmp_path / 'none.parquet'}'\n"),
        (["db", "query", "DELETE FROM measurement"],
         "Error: db query is read-only: only SELECT is allowed, got DELETE\n"),
        (["db", "query", "DROP TABLE device"],
         "Error: db query is read-only: only SELECT is allowed, got DROP\n"),
        (["db", "query", "UPDATE measurement SET median_us = 0"],
         "Error: db query is read-only: only SELECT is allowed, got UPDATE\n"),
        (["db", "query", "SELECT 1; DELETE FROM device"],
         "Error: db query runs exactly one SELECT statement; got 2 statements\n"),
        (["db", "query", "COPY measurement TO 'x.csv'"],
         "Error: db query is read-only: only SELECT is allowed, got COPY\n"),
        (["db", "query", "ATTACH 'x.db' AS x"],
         "Error: db query is read-only: only SELECT is allowed, got ATTACH\n"),
        (["db", "query", "SELEC 1"],
         'Error: cannot parse query: Parser Error: syntax error at or near "SELEC"\n'),
        (["db", "export", "--device", "nope", "-o", str(tmp_path / "x.parquet")],
         "Error: no device 'nope' in the store; `hwcost db ls` lists devices, "
         "`hwcost device --save` records this machine\n"),
    ]
    for args, expected in cases:
        r = run(*args, "--db", sqlite_url)
        assert (r.exit_code, r.output) == (1, expected), args
    r = run("db", "import", str(junk), "--db", sqlite_url)
    assert r.exit_code == 1 and r.output.startswith(
        "Error: invalid bundle junk.parquet: not a readable Parquet file (")
    assert r.output.count("\n") == 1
    r = run("db", "query", "SELECT * FROM read_csv('/etc/hostname')", "--db", sqlite_url)
    assert r.exit_code == 1 and r.output.startswith("Error: query failed: Permission Error")
    assert sqlite_hash(sqlite_url) == before
    assert not (tmp_path / "x.parquet").exists()
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    r = run("db", "status", "--db", absent)
    assert r.output == (f"Error: no store at {absent} (no such file); `hwcost db init --db "
                        f"{absent}` creates one, or check the path\n")
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("as_json", [False, True])
def test_query_reads_tables_and_the_costs_view(store_url, as_json):
    with open_store(store_url) as s:
        info = small_store(s)
    sql = ("SELECT device, shape, count(*) AS n, min(median_us) > 0 AS positive FROM costs "
           "GROUP BY device, shape ORDER BY device, shape")
    r = run("db", "query", sql, "--db", store_url, *(["--json"] if as_json else []))
    assert r.exit_code == 0, r.output
    if as_json:
        rows = json.loads(r.output)
        assert len(rows) == 4 and all(x["n"] == 27 and x["positive"] for x in rows)
        assert {x["device"] for x in rows} == set(info.devices)
    else:
        lines = r.output.splitlines()
        assert lines[0].split() == ["device", "shape", "n", "positive"]
        assert len(lines) == 6 and all(line.split()[2] == "27" for line in lines[2:])
    r = run("db", "query", "SELECT count(*) AS n FROM measurement WHERE campaign IS NULL OR "
            "campaign <> ''", "--db", store_url, "--json")
    assert json.loads(r.output) == [{"n": info.n_measurements}]
