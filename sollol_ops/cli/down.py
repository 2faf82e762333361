"""`sollol-ops down`: stop the coordinator."""

from __future__ import annotations

import click

from sollol_ops import coordinator


@click.command()
@click.option(
    "--timeout", type=click.FloatRange(0.1, 600), default=15, show_default=True, help="Seconds before SIGKILL."
)
def down(timeout: float) -> None:
    """Stop the coordinator (SIGTERM, then SIGKILL after --timeout) and remove its state."""
    state = coordinator.stop(timeout=timeout)
    if state is None:
        click.echo("no coordinator running")
    else:
        click.echo(f"stopped {state.model} (pid {state.pid})")
