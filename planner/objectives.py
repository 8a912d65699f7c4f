"""What the planner maximises, and the constraints it plans under.

Objectives (all "gain against the all-baseline model", larger is better):

- ``time``: measured (or estimated) latency gain in microseconds: the method's objective;
- ``memory``: weight bytes saved;
- ``macs``: theoretical time gain from MAC counts at each precision's peak rate (the proxy
  most tools use; it cannot see casts, quantize/dequantize or small-shape overheads).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hwcost.planner.enums import Objective
from hwcost.planner.problem import Choice, Option, Problem

from hwcost.errors import HwcostError
from hwcost.precision import Precision, parse_precision

OBJECTIVES = tuple(Objective.values())


def parse_objective(name: str) -> str:
    """Validate an objective name (:class:`planner.enums.Objective`); the error lists the
    known ones."""
    if name not in OBJECTIVES:
        raise HwcostError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return Objective(name).value


def gain(choice: Choice, option: Option, objective: str) -> float:
    """An option's gain against its subgraph's baseline under ``objective``."""
    base = choice.baseline
    if objective == Objective.TIME:
        return option.gain_us
    if objective == Objective.MEMORY:
        return base.weight_bytes - option.weight_bytes
    if objective == Objective.MACS:
        return base.macs_time_us - option.macs_time_us
    raise HwcostError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class Threshold:
    """A loss-MSE bound: absolute, or a fraction of the loss MSE of the fastest plan
    (:func:`usable_reference_mse`: the formats the plan may use, not every format)."""

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.value >= 0 or self.value == float("inf"):
            raise HwcostError(f"loss-MSE threshold must be a finite number >= 0, got {self.value}")

    def resolve(self, problem: Problem) -> float:
        """The absolute bound for ``problem``."""
        return self.value * usable_reference_mse(problem) if self.relative else self.value

    def describe(self, problem: Problem) -> str:
        """The bound as given with its absolute value: ``10% (loss MSE 1.2e-04)``."""
        return f"{self} (loss MSE {self.resolve(problem):.3g})" if self.relative else str(self)

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def parse_threshold(text: str | float) -> Threshold:
    """``0.01`` (absolute loss MSE) or ``10%`` (of the fastest plan's loss MSE)."""
    if isinstance(text, (int, float)):
        return Threshold(float(text))
    s = str(text).strip()
    m = re.fullmatch(r"([0-9.eE+-]+)\s*%", s)
    try:
        if m:
            return Threshold(float(m.group(1)) / 100.0, relative=True)
        return Threshold(float(s))
    except ValueError:
        raise HwcostError(f"cannot read loss-MSE threshold {text!r}: give a number such as 0.01 "
                          "or a percentage of the fastest plan's loss MSE such as 10%") from None


def usable_reference_mse(problem: Problem) -> float:
    """What ``100%`` means: the predicted loss MSE of the fastest plan, each subgraph in its
    largest-gain configuration (the lower loss among equal gains).

    Only formats that make the plan faster enter it: a format the device emulates (fp8 on a
    CPU), slower than the baseline everywhere, is never in the fastest plan, so its much
    larger loss does not stretch the scale (with it, 10% and 50% of the all-lowest-precision
    loss could give the same plan). Falls back to :func:`lowest_precision_mse` when no
    configuration gains anything."""
    total = 0.0
    for c in problem.choices:
        best = max(c.options, key=lambda o: (o.gain_us, -o.loss_mse))
        total += best.loss_mse
    return total if total > 0 else lowest_precision_mse(problem)


def lowest_precision_mse(problem: Problem) -> float:
    """Predicted loss MSE with every layer in the problem's lowest precision (fewest bits;
    among equally narrow formats the one with the larger total, so 10% stays conservative)."""
    narrowest = min(Precision(p).bits for p in problem.precisions)
    totals = []
    for p in problem.precisions:
        if Precision(p).bits != narrowest:
            continue
        total, complete = 0.0, True
        for c in problem.choices:
            opt = c.uniform(p)
            if opt is None:
                complete = False
                break
            total += opt.loss_mse
        if complete:
            totals.append(total)
    if not totals:
        raise HwcostError("a relative threshold needs the all-lowest-precision config of every "
                          "subgraph in the cost table; give an absolute --max-loss-mse")
    return max(totals)


@dataclass(frozen=True)
class Constraints:
    """Constraints besides the loss-MSE bound: memory budget, pins and tied groups.

    ``pins`` are (pattern, precision) pairs; ``groups`` are tuples of patterns whose matched
    layers must all run in one precision.
    """

    max_loss_mse: float | None = None
    max_weight_bytes: float | None = None
    pins: tuple[tuple[str, str], ...] = ()
    groups: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_loss_mse is not None and not self.max_loss_mse >= 0:
            raise HwcostError(f"max loss MSE must be >= 0, got {self.max_loss_mse}")
        if self.max_weight_bytes is not None and not self.max_weight_bytes > 0:
            raise HwcostError(f"memory budget must be > 0 bytes, got {self.max_weight_bytes}")
        for _, p in self.pins:
            parse_precision(p)

    def to_dict(self) -> dict:
        return {"max_loss_mse": self.max_loss_mse, "max_weight_bytes": self.max_weight_bytes,
                "pins": [list(p) for p in self.pins], "groups": [list(g) for g in self.groups]}


def parse_pins(texts: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``PATTERN=PREC`` strings (``lm_head=fp32``, ``*.down_proj=bf16``) to pairs."""
    out = []
    for t in texts:
        if "=" not in t:
            raise HwcostError(f"cannot read pin {t!r}: expected PATTERN=PRECISION, e.g. lm_head=fp32")
        pat, prec = (s.strip() for s in t.rsplit("=", 1))
        out.append((pat, parse_precision(prec).value))
    return tuple(out)


def parse_groups(texts: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Comma-separated pattern lists (``*.q_proj,*.k_proj,*.v_proj``), one group each."""
    groups = []
    for t in texts:
        pats = tuple(p.strip() for p in t.split(",") if p.strip())
        if not pats:
            raise HwcostError(f"empty group {t!r}: give comma-separated layer patterns")
        groups.append(pats)
    return tuple(groups)


def parse_bytes(text: str | float | None) -> float | None:
    """``12GB``, ``512MiB``, ``1e9`` to bytes (None stays None)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]i?B|B)?\s*", str(text), re.I)
    if not m:
        raise HwcostError(f"cannot read memory budget {text!r}: give bytes such as 12GB or 512MiB")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    try:
        return float(m.group(1)) * mult
    except ValueError:
        raise HwcostError(f"cannot read memory budget {text!r}") from None
