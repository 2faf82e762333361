"""`sollol-ops heal`: bring the running coordinator back by hand (what sollol_heal=auto does by itself)."""

from __future__ import annotations

import click

from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.cli.render import CliReporter
from sollol_ops.serve import heal as healing
from sollol_ops.ui import echo_json


@click.command()
@options.json_option("Print what was done as JSON.")
@click.option(
    "--stall-timeout",
    type=click.FloatRange(0.1, 86400),
    help="Seconds with requests in flight and no model step that count as stalled, watched now (default: the "
    "inventory's sollol_stall_timeout, 60).",
)
@click.pass_obj
def heal(ctx: Context, as_json: bool, stall_timeout: float | None) -> None:
    """Heal the running coordinator: stalled -> stop it (its clients get an error); degraded and the
    backends left out answer again -> start it again on them; else say why there is nothing to heal."""
    cluster = ctx.cluster()
    timeout = cluster.stall_timeout if stall_timeout is None else stall_timeout
    reporter = CliReporter(quiet=as_json, verbose=ctx.verbose)
    outcome = healing.heal(cluster, timeout, reporter)
    reporter.done()
    if as_json:
        echo_json(outcome)
    else:
        click.echo(outcome.message)
