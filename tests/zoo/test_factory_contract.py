"""``hwcost run pkg.mod:factory`` with a factory's own loss and batches: bad extras are one
line each, before anything is measured or stored."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.store import open_store


@pytest.mark.parametrize(("factory", "message"), [
    ("mean_loss", "Error: loss_fn must return one loss per sample, shape [8], got [] (a mean "
                  "over the batch is not per-sample)"),
    ("nan_loss", "Error: loss_fn returned non-finite losses (NaN or inf)"),
    ("str_batches", "Error: str_batches calibration batch 0 is a str; a batch must be a tensor, a dict "
                    "of tensors or a tuple of tensors (samples first)"),
    ("one_batch_not_a_list", "Error: factory 'tests.zoo.bad_factories:one_batch_not_a_list': "
                             "calibration must be a list of batches; got dict"),
])
def test_bad_factory_extras_are_one_line_and_store_nothing(factory, message, tmp_path):
    db = tmp_path / "s.db"
    res = CliRunner().invoke(cli, ["run", f"tests.zoo.bad_factories:{factory}", "--quick",
                                   "--shape", "batch=1,seq=16", "--db", f"sqlite:///{db}",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1] == message
    assert "Traceback" not in res.output
    with open_store(f"sqlite:///{db}") as s:
        assert s.models() == [] and s.measurement_count() == 0
