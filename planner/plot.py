"""PNG of a Pareto frontier (matplotlib with the Agg backend, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path


def plot_frontier(points, path: str | Path, title: str = "") -> Path:
    """Predicted speedup against predicted loss MSE, one marker per solved threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.solution.loss_mse for p in points]
    ys = [p.solution.predicted_speedup for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.step(xs, ys, where="post", color="tab:blue", alpha=0.6)
    ax.plot(xs, ys, "o", color="tab:blue", ms=4)
    if any(x > 0 for x in xs) and min(xs) >= 0:
        ax.set_xscale("symlog", linthresh=min([x for x in xs if x > 0]))
    ax.set_xlabel("predicted loss MSE")
    ax.set_ylabel("predicted speedup (x)")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_title(title or "Pareto frontier")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
