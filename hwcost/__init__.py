"""hwcost: a persistent, device-keyed database of measured precision costs, and the tools
that fill it (profiles, sensitivity) and plan from it (planner)."""

__version__ = "0.1.0"
