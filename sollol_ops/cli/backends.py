"""`sollol-ops backends`: the RPC backends the inventory declares."""

from __future__ import annotations

import click

from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.ui import echo_json, echo_table


@click.command()
@options.json_option("Machine-readable output.")
@click.pass_obj
def backends(ctx: Context, as_json: bool) -> None:
    """List the RPC backends of the inventory, in the order layers are assigned."""
    cluster = ctx.cluster()
    if as_json:
        echo_json(
            {
                "inventory": cluster.inventory,
                "backends": [{**b.__dict__, "endpoint": b.endpoint} for b in cluster.backends],
                "coordinators": cluster.coordinators,
            }
        )
        return
    echo_table(
        ["HOST", "ENDPOINT", "DEVICE", "BACKEND", "MEMORY CAP", "WEIGHT"],
        [
            [
                b.host,
                b.endpoint,
                b.device or "(all)",
                b.backend,
                f"{b.memory_mib} MiB" if b.memory_mib else "-",
                f"{b.weight:g}" if b.weight else "-",
            ]
            for b in cluster.backends
        ],
    )
    coords = ", ".join(f"{c.host} ({c.address})" for c in cluster.coordinators) or "none"
    click.echo(f"\ncoordinator(s): {coords}    inventory: {cluster.inventory}")
