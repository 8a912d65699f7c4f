"""The fixed sets of names hwcost stores and accepts, as str-Enums.

A plain string stands in for a member wherever one is expected (``"cpu" == DeviceKind.CPU``),
on the command line and in JSON, and a member formats as its value. The CLI builds its
``click.Choice`` lists from these, so the library and the commands cannot drift apart.
This module imports nothing heavy: the CLI reads it when its commands are defined.
Stores keep the plain values (``.value``), never the members.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["NameEnum", "DeviceKind", "DeploymentMode", "CostSource", "ConflictRule", "TaskState",
           "SensitivityMethod", "ONE_PASS_METHODS"]


class NameEnum(str, Enum):
    """A str-Enum whose members print as their values."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> list[str]:
        """Every member's value, in definition order (a ``click.Choice`` list)."""
        return [m.value for m in cls]


class DeviceKind(NameEnum):
    """The kinds of device a backend runs on (``profiles.backends``)."""

    CPU = "cpu"
    CUDA = "cuda"
    HPU = "hpu"


class DeploymentMode(NameEnum):
    """How a deployed model runs: as is, or under ``torch.compile``; each is its own device key."""

    EAGER = "eager"
    COMPILED = "compiled"


class CostSource(NameEnum):
    """Where a subgraph's cost comes from, from most to least trusted."""

    MEASURED = "measured"
    LEARNED = "learned"
    ROOFLINE = "roofline"


class ConflictRule(NameEnum):
    """What an import does with a row whose key the store holds with other values."""

    KEEP = "keep"  # the store's row stays
    REPLACE = "replace"  # the bundle's row wins
    NEWER = "newer"  # the row with the later timestamp wins


class TaskState(NameEnum):
    """The state of a campaign's unit or task in the work queue."""

    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class SensitivityMethod(NameEnum):
    """How a sensitivity table was computed."""

    TAYLOR = "taylor"  # first-order Taylor on the actual rounding errors
    NOISE = "noise"  # independent noise of each format's variance
    DIRECT = "direct"  # ground truth: each layer quantized alone, loss measured
    WEIGHT_ONLY = "weight_only"  # data-free baseline: squared weight error
    FISHER = "fisher"  # baseline: gradient-weighted output error (AutoQuantize-style)


ONE_PASS_METHODS = (SensitivityMethod.TAYLOR, SensitivityMethod.NOISE)
"""The methods ``hwcost sensitivity`` computes from one forward and backward pass."""
