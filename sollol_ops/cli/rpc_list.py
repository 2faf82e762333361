"""`sollol-ops rpc-list`: the value for llama-server's --rpc, in inventory order."""

from __future__ import annotations

import click

from sollol_ops.cli.context import Context


@click.command("rpc-list")
@click.pass_obj
def rpc_list(ctx: Context) -> None:
    """Print host:port,host:port,... ready to paste after --rpc."""
    click.echo(ctx.cluster().rpc_list())
