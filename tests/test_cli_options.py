"""Options that several commands take are one shared decorator each (hwcost/app/options.py):
the same flag, type and wording everywhere, found by walking every command."""

from __future__ import annotations

import click
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.app.options import ALLOW_UNSTABLE_HELP, QUICK_HELP


def _options(flag: str) -> dict[str, click.Option]:
    found: dict[str, click.Option] = {}

    def walk(cmd: click.Command, path: str) -> None:
        for p in cmd.params:
            if isinstance(p, click.Option) and flag in p.opts:
                found[path] = p
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(cli, "")
    return found


def test_quick_says_the_same_first_and_then_what_the_command_does():
    opts = _options("--quick")
    assert {"run", "profile"} <= set(opts)
    assert all(o.is_flag and o.help.startswith(QUICK_HELP + " ") for o in opts.values())


def test_allow_unstable_and_measured_only_are_the_same_for_run_and_plan():
    unstable, measured = _options("--allow-unstable"), _options("--measured-only")
    assert {"run", "plan", "coverage"} <= set(unstable)
    assert unstable["run"].help == unstable["plan"].help == ALLOW_UNSTABLE_HELP
    assert measured["run"].help == measured["plan"].help


def test_threads_is_one_option_that_refuses_zero():
    opts = _options("--threads")
    assert {"profile", "validate", "device calibrate"} <= set(opts)
    assert len({(o.help, repr(o.type)) for o in opts.values()}) == 1
    res = CliRunner().invoke(cli, ["validate", "1", "--threads", "0"])
    assert res.exit_code == 2 and "Invalid value for '--threads': 0 is not in the range x>=1" in res.output
