"""PNG of a Pareto frontier (matplotlib with the Agg backend, imported only when plotting).

The plot answers "which plan, and how sure": every solved threshold is a point coloured by
where its costs come from (all measured on the device, some learned, some roofline), the
chosen plan is a star, the loss-MSE bound a dashed vertical line, and validated plans are
crosses at their *measured* loss MSE and speedup.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SOURCE_STYLE = {  # cost source of a point -> (colour, legend label)
    "measured": ("tab:green", "costs all measured on the device"),
    "learned": ("tab:orange", "some costs from the learned model"),
    "roofline": ("tab:red", "some costs roofline estimates"),
}


def point_source(solution) -> str:
    """The weakest cost source among a solution's chosen subgraph costs."""
    have = set(solution.sources)
    return "roofline" if "roofline" in have else "learned" if "learned" in have else "measured"


def plot_frontier(points, path: str | Path, title: str = "", *, chosen=None,
                  bound: float | None = None,
                  measured: Sequence[tuple[float, float, str]] = ()) -> Path:
    """Predicted speedup against predicted loss MSE, one marker per solved threshold.

    ``chosen``: the plan's solution (a star); ``bound``: the loss-MSE bound (a line);
    ``measured``: (measured loss MSE, measured speedup, label) of validated plans."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, MaxNLocator

    xs = [p.solution.loss_mse for p in points]
    ys = [p.solution.predicted_speedup for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.step(xs, ys, where="post", color="tab:blue", alpha=0.4, lw=1)
    for src, (colour, label) in SOURCE_STYLE.items():
        sel = [(x, y) for p, x, y in zip(points, xs, ys) if point_source(p.solution) == src]
        if sel:
            ax.plot(*zip(*sel), "o", color=colour, ms=5, label=f"frontier: {label}")
    if chosen is not None:
        ax.plot([chosen.loss_mse], [chosen.predicted_speedup], "*", color="black", ms=14,
                label=f"chosen plan ({chosen.predicted_speedup:.2f}x predicted)", zorder=5)
    if bound is not None:
        ax.axvline(bound, color="black", ls=":", lw=1, label=f"bound: loss MSE <= {bound:.3g}")
    for mx, my, label in measured:
        ax.plot([mx], [my], "X", color="tab:purple", ms=9, zorder=6,
                label=f"{label}: measured {my:.2f}x, loss MSE {mx:.3g}")
    all_x = [x for x in xs + [m[0] for m in measured] + ([bound] if bound else []) if x > 0]
    if all_x and max(all_x) / min(all_x) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(numticks=6))
        ax.set_xlim(min(all_x) / 2, max(all_x) * 2)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.set_xlabel("predicted loss MSE (mean squared change of per-sample loss)")
    ax.set_ylabel("predicted speedup over the baseline (x)")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_title(title or "Pareto frontier", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
