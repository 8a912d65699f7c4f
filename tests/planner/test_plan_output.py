"""`hwcost plan` tells the truth about what it planned: the measured share is that of the
device actually planned, a bound that does not bind or that forces the baseline is pointed
out, and an identical plan is stored once."""

from __future__ import annotations

from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.store import open_store


def _plan(url: str, device: str, bound: str) -> str:
    res = CliRunner().invoke(cli, ["plan", "tiny", "--device", device, "--shape",
                                   "batch=1,seq=16", "--max-loss-mse", bound, "--db", url])
    assert res.exit_code == 0, res.output
    return res.output


def _line(out: str, head: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(head))


def test_measured_share_is_that_of_the_planned_device(tiny_sqlite):
    url, _ = tiny_sqlite
    # nothing was measured on the catalog's H100: no "100% measured" claim
    out = _plan(url, "H100-SXM", "10%")
    assert _line(out, "measured") == ("measured      0% of the predicted gain rests on costs "
                                      "measured on H100-SXM (subgraph costs: 5 roofline)")
    out = _plan(url, "cpu", "10%")
    assert _line(out, "measured") == ("measured      100% of the predicted gain rests on costs "
                                      "measured on Test CPU (planner fixture) (subgraph costs: "
                                      "5 measured)")


def test_a_bound_that_does_not_bind_or_forces_the_baseline_is_pointed_out(tiny_sqlite):
    url, _ = tiny_sqlite
    loose = _plan(url, "cpu", "5")
    assert _line(loose, "note").startswith("note          the bound 5 does not bind: this is the "
                                           "fastest plan there is (loss MSE 0.01378)")
    tight = _plan(url, "cpu", "1e-12")
    assert _line(tight, "layers").startswith("layers        13 fp32")
    assert _line(tight, "note") == ("note          the bound 1e-12 forces the baseline: no layer "
                                    "can leave fp32 within it; the fastest plan needs loss MSE "
                                    "0.01378")
    binding = _plan(url, "cpu", "10%")
    assert "note" not in binding


def test_an_identical_plan_is_stored_once(tiny_sqlite):
    url, m = tiny_sqlite
    first = _line(_plan(url, "cpu", "10%"), "plan ")
    second = _line(_plan(url, "cpu", "10%"), "plan ")
    assert first == second  # same id
    other = _line(_plan(url, "cpu", "5"), "plan ")
    assert other != first
    with open_store(url) as s:
        dev = s.get_device(m.device)
        assert len(s.plans_for(m.model_id, dev.id, m.shape)) == 2


def test_pareto_plot_marks_plan_bound_measured_points_and_sources(tiny_sqlite, tmp_path):
    from hwcost.planner.objectives import parse_threshold
    from hwcost.planner.plans import make_plan
    from hwcost.planner.plot import point_source
    from hwcost.planner.sweep import sweep

    url, m = tiny_sqlite
    with open_store(url) as s:
        r = make_plan(s, "tiny", "cpu", m.shape, parse_threshold("10%"))
        h100 = make_plan(s, "tiny", "H100-SXM", m.shape, parse_threshold("10%"))
    assert point_source(r.solution) == "measured" and point_source(h100.solution) == "roofline"
    points = sweep(r.problem, 6)
    import matplotlib.pyplot as plt
    from hwcost.planner.plot import plot_frontier

    calls = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, path, *a, **k):  # read what was drawn before the figure is written
        ax = fig.axes[0]
        calls["labels"] = [h.get_label() for h in ax.get_legend().legend_handles]
        calls["ticks"] = len(ax.get_xticks())
        return real_savefig(fig, path, *a, **k)

    plt.Figure.savefig = spy
    try:
        png = plot_frontier(points, tmp_path / "p.png", chosen=r.solution,
                            bound=r.solution.max_loss_mse, measured=[(1e-3, 1.5, "plan 1 validated")])
    finally:
        plt.Figure.savefig = real_savefig
    assert png.read_bytes()[:4] == b"\x89PNG"
    labels = calls["labels"]
    assert labels[0] == "frontier: costs all measured on the device"
    assert any(x.startswith("chosen plan (") for x in labels)
    assert any(x.startswith("bound: loss MSE <= ") for x in labels)
    assert "plan 1 validated: measured 1.50x, loss MSE 0.001" in labels
    assert calls["ticks"] <= 12  # a few readable ticks, not a crowd
