"""Entry point of the ``hwcost`` command."""

from __future__ import annotations

import click

from hwcost import __version__
from hwcost.app.campaign import campaign_cmd
from hwcost.app.costs import coverage_cmd
from hwcost.app.db import db_cmd
from hwcost.app.deploy import deploy_cmd
from hwcost.app.device import device_cmd
from hwcost.app.doctor import doctor_cmd
from hwcost.app.plan import export_plan_cmd, plan_cmd, validate_cmd
from hwcost.app.profile import profile_cmd
from hwcost.app.run import run_cmd
from hwcost.app.sensitivity import sensitivity_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hwcost")
def cli() -> None:
    """hwcost: pick per-layer precisions (bf16, fp8, int8, ...) that make a model fastest on
    a device while the loss error stays under a bound, from a database of measured costs.

    \b
    The usual flow:
      hwcost profile MODEL --device cpu --shape batch=1,seq=128   # measure (on the device)
      hwcost sensitivity MODEL --calib DATA                      # loss-MSE per layer
      hwcost plan MODEL --device cpu --shape batch=1,seq=128 --max-loss-mse 0.01
      hwcost run                                                 # all of it, on the demo model

    The store is $HWCOST_DB or an embedded SQLite file; every command takes --db.
    """
    _quiet_third_party_logs()


def _quiet_third_party_logs() -> None:
    """torchao warns about CUDA-only extensions on CPU machines and torch about deprecated
    pytree registrations at import; neither is actionable for our users."""
    import logging

    for name in ("torchao", "torch.utils._pytree", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


cli.add_command(device_cmd)
cli.add_command(coverage_cmd)
cli.add_command(plan_cmd)
cli.add_command(validate_cmd)
cli.add_command(export_plan_cmd)
cli.add_command(deploy_cmd)
cli.add_command(doctor_cmd)
cli.add_command(db_cmd)
cli.add_command(sensitivity_cmd)
cli.add_command(profile_cmd)
cli.add_command(run_cmd)
cli.add_command(campaign_cmd)
