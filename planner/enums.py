"""The fixed sets of names the planner accepts and reports, as str-Enums (see
:mod:`hwcost.enums`); light, so the CLI builds its choices from them."""

from __future__ import annotations

from hwcost.enums import NameEnum

__all__ = ["Objective", "ExportFormat", "IncNaming", "SolverStatus"]


class Objective(NameEnum):
    """The gain a plan maximises."""

    TIME = "time"  # measured (or estimated) latency saved
    MEMORY = "memory"  # weight bytes saved
    MACS = "macs"  # MAC time saved


class ExportFormat(NameEnum):
    """What ``export`` writes a plan as."""

    JSON = "json"  # the plan document
    INC = "inc"  # Intel Neural Compressor FP8 config
    TORCHAO = "torchao"  # torchao configs per layer
    CSV = "csv"  # the per-layer report
    MD = "md"  # the per-layer report as a Markdown table


class IncNaming(NameEnum):
    """Module names an INC config is written for."""

    HF = "hf"  # optimum-habana
    VLLM = "vllm"  # vLLM-gaudi: fused qkv_proj and gate_up_proj


class SolverStatus(NameEnum):
    """How good a solver's answer is known to be."""

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"  # a time limit stopped the search; the gap says how far it may be
