"""``python -m hwcost.app``: the same as the ``hwcost`` command."""

from hwcost.app.main import cli

cli(prog_name="hwcost")
