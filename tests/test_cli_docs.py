"""Every command of the CLI teaches: it has help text and a section in docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import click

from hwcost.app.main import cli

DOC = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()


def _walk(group: click.Group, prefix: str = "hwcost"):
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, path)


def test_every_command_has_help_and_a_place_in_the_docs():
    missing_help, missing_doc = [], []
    for path, cmd in _walk(cli):
        if not (cmd.help and len(cmd.help.strip()) > 20):
            missing_help.append(path)
        top = " ".join(path.split()[:2])
        if f"`{path}" not in DOC and f"{path} " not in DOC and f"`{top}" not in DOC:
            missing_doc.append(path)
    assert missing_help == []
    assert missing_doc == []
