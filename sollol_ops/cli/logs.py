"""`sollol-ops logs [-f]`: the coordinator's llama-server log."""

from __future__ import annotations

import time

import click

from sollol_ops.serve import lifecycle


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("-n", "--lines", type=click.IntRange(0, 1_000_000), default=50, show_default=True)
def logs(follow: bool, lines: int) -> None:
    """Print the coordinator's log (the last run's, also after it stopped)."""
    path = lifecycle.log_path()
    with open(path, errors="replace") as fh:
        tail = fh.readlines()[-lines:] if lines else []
        click.echo("".join(tail), nl=False)
        while follow:
            line = fh.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)
