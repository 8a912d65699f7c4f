"""The per-layer report of a plan, for review: each layer's precision, its share of the
predicted gain and of the predicted loss MSE, and where its cost came from (CSV, Markdown).

Costs are measured per subgraph (the layers of an attention block or an MLP together, casts
included), so the gain share is the subgraph's and is shown on each of its layers with the
subgraph's position; the loss MSE is per layer (``s_l(p)`` of the sensitivity table, summed to
the predicted loss), read from the plan's ``layer_loss_mse`` (plans written before it existed
report the subgraph's loss on its first changed layer).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

from hwcost.planner.export import PlanLike, validate_plan

COLUMNS = ("layer", "precision", "subgraph", "gain_us", "gain_share", "loss_mse", "loss_share",
           "source")


@dataclass(frozen=True)
class LayerRow:
    """One layer of the report (``gain_*`` are its subgraph's)."""

    layer: str
    precision: str
    subgraph: int | None
    gain_us: float | None
    gain_share: float | None
    loss_mse: float | None
    loss_share: float | None
    source: str


def _share(part: float | None, total: float) -> float | None:
    return None if part is None or not total else part / total


def layer_report(doc: PlanLike) -> list[LayerRow]:
    """One row per planned layer, in the plan's subgraph order."""
    plan = validate_plan(doc)
    subs = plan.subgraphs
    gain_total = sum(max(float(s.gain_us or 0.0), 0.0) for s in subs) or None
    rows: list[LayerRow] = []
    per_layer: dict[str, tuple] = {}
    for s in subs:
        names = list(s.layers)
        losses = list(s.layer_loss_mse)
        if len(losses) != len(names):  # an older plan: the subgraph's loss on its first layer
            losses = [float(s.loss_mse or 0.0)] + [0.0] * (len(names) - 1)
        for name, loss in zip(names, losses):
            per_layer[name] = (s.position, s.gain_us, loss, s.source or "")
    loss_total = sum(v[2] for v in per_layer.values())
    for name, prec in plan.layers.items():
        pos, gain, loss, source = per_layer.get(name, (None, None, None, ""))
        rows.append(LayerRow(name, prec, pos, gain,
                             _share(gain, gain_total) if gain_total else None,
                             loss, _share(loss, loss_total), source))
    return rows


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def to_csv(rows: list[LayerRow]) -> str:
    """The report as CSV with a header row (:data:`COLUMNS`)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(v) for v in asdict(r).values()])
    return out.getvalue()


def to_markdown(rows: list[LayerRow], doc: PlanLike) -> str:
    """The report as a Markdown table under a line with the plan's prediction."""
    plan = validate_plan(doc)
    pr = plan.predicted
    head = (f"Plan for {plan.model.name} on {plan.device.name or plan.device.kind}"
            f" ({plan.shape}): predicted speedup {_cell(pr.speedup)}x, "
            f"loss MSE {_cell(pr.loss_mse)}, baseline {plan.baseline}.\n\n")
    fmt = {"gain_share": "{:.1%}", "loss_share": "{:.1%}"}
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [fmt[k].format(v) if k in fmt and v is not None else _cell(v)
                 for k, v in asdict(r).items()]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
