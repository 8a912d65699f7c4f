"""``python -m hwcost.cli``: the same as the ``hwcost`` command."""

from hwcost.cli.main import cli

cli(prog_name="hwcost")
