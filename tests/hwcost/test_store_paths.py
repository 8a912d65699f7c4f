"""Commands that read a store refuse an SQLite path that does not exist, in one line and
creating nothing; `db init` and the writers create it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from hwcost.app.main import cli

READERS = [
    ["db", "ls"],
    ["db", "export", "-o", "{tmp}/x.parquet"],
    ["db", "query", "SELECT 1"],
    ["db", "status"],
    ["db", "migrate"],
    ["plan", "demo", "--device", "cpu", "--shape", "batch=1,seq=128", "--max-loss-mse", "1%"],
    ["coverage", "demo", "--device", "cpu", "--shape", "batch=1,seq=128"],
    ["sensitivity", "show", "demo"],
    ["export-plan", "1", "--format", "json"],
    ["validate", "1"],
    ["campaign", "ls"],
]


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_readers_refuse_a_missing_sqlite_path_and_create_nothing(args, tmp_path):
    folder = tmp_path / "typo"
    url = f"sqlite:///{folder / 'store.db'}"
    res = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args] + ["--db", url])
    assert res.exit_code == 1, res.output
    assert res.output == (f"Error: no store at {url} (no such file); `hwcost db init --db {url}` "
                          "creates one, or check the path\n")
    assert not folder.exists()  # not the file, not even its folder
    assert not (tmp_path / "x.parquet").exists()


def test_init_creates_the_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'store.db'}"
    res = CliRunner().invoke(cli, ["db", "init", "--db", url])
    assert res.exit_code == 0 and (tmp_path / "new" / "store.db").is_file()
    res = CliRunner().invoke(cli, ["db", "ls", "--db", url])
    assert res.exit_code == 0 and res.output.startswith("schema version")
