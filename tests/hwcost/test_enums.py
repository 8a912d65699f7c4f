"""The fixed name sets are defined once, as str-Enums in the library; the CLI's choices and the
library's own tuples are built from them, and a plain string stands in for a member."""

from __future__ import annotations

import json

import click
import pytest
from hwcost.planner.enums import ExportFormat, IncNaming, Objective, SolverStatus

from hwcost.app.main import cli
from hwcost.enums import (
    ONE_PASS_METHODS,
    ConflictRule,
    CostSource,
    DeploymentMode,
    DeviceKind,
    SensitivityMethod,
    TaskState,
)
from hwcost.errors import HwcostError
from hwcost.store.records import SensitivityTable


def _choices(path: str, option: str) -> list[str]:
    cmd: click.Command = cli
    for name in path.split():
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    opt = next(p for p in cmd.params if option in getattr(p, "opts", ()))
    return list(opt.type.choices)


@pytest.mark.parametrize(("path", "option", "names"), [
    ("plan", "--objective", Objective.values()),
    ("export-plan", "--format", ExportFormat.values()),
    ("export-plan", "--naming", IncNaming.values()),
    ("run", "--device", DeviceKind.values()),
    ("device", "--kind", DeviceKind.values()),
    ("db import", "--on-conflict", ConflictRule.values()),
    ("sensitivity show", "--method", SensitivityMethod.values()),
    ("sensitivity run", "--method", [m.value for m in ONE_PASS_METHODS]),
])
def test_cli_choices_are_the_library_enums(path, option, names):
    assert _choices(path, option) == names


def test_library_tuples_come_from_the_enums():
    from hwcost.planner.export import FORMATS
    from hwcost.planner.inc import NAMINGS
    from hwcost.planner.objectives import OBJECTIVES
    from hwcost.profiles.backends import backend_kinds

    from hwcost.costs import SOURCES
    from hwcost.store.campaigns import OPEN
    from hwcost.store.exchange import CONFLICT_RULES

    assert SOURCES == ("measured", "learned", "roofline") == tuple(CostSource.values())
    assert CONFLICT_RULES == tuple(ConflictRule.values())
    assert OPEN == (TaskState.PENDING, TaskState.CLAIMED)
    assert (FORMATS, NAMINGS, OBJECTIVES) == (tuple(ExportFormat.values()),
                                              tuple(IncNaming.values()), tuple(Objective.values()))
    assert backend_kinds() == tuple(DeviceKind.values())
    # the sensitivity table's methods are the enum's (the record checks against it)
    with pytest.raises(ValueError, match=", ".join(SensitivityMethod.values())):
        SensitivityTable((), method="nope")
    assert set(ONE_PASS_METHODS) < set(SensitivityMethod)


def test_members_are_their_strings():
    assert Objective.MEMORY == "memory" and f"{SolverStatus.FEASIBLE}" == "feasible"
    assert str(DeploymentMode.COMPILED) == "compiled" and {"cpu": 1}[DeviceKind.CPU] == 1
    assert json.dumps({"objective": Objective.MACS}) == '{"objective": "macs"}'
    assert Objective("time") is Objective.TIME


def test_parsers_return_plain_values_and_refuse_unknown_names():
    from hwcost.planner.objectives import parse_objective

    assert type(parse_objective("memory")) is str  # stores keep plain values
    with pytest.raises(HwcostError, match="unknown objective 'speed'; known: time, memory, macs"):
        parse_objective("speed")
