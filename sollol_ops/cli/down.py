"""`sollol-ops down`: stop the coordinator."""

from __future__ import annotations

import click

from sollol_ops.serve import lifecycle


@click.command()
@click.option(
    "--timeout", type=click.FloatRange(0.1, 600), default=15, show_default=True, help="Seconds before SIGKILL."
)
def down(timeout: float) -> None:
    """Stop the coordinator (SIGTERM, then SIGKILL after --timeout) and remove its state. Only a process
    proven to be the recorded llama-server (pid, start time and program) is ever signalled."""
    stopped = lifecycle.down(timeout=timeout)
    if stopped is None:
        click.echo("no coordinator running")
    elif stopped.was_running:
        click.echo(f"stopped {stopped.state.model} (pid {stopped.state.pid})")
    else:
        click.echo(
            f"{stopped.state.model} (pid {stopped.state.pid}) was no longer running (or that pid is now another "
            "process, left alone); state removed"
        )
