"""`sollol-ops toolchain`: which llama.cpp binaries sollol-ops will run."""

from __future__ import annotations

import click

from sollol_ops.cli import options
from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.ui import echo_json


@click.command()
@options.json_option()
def toolchain(as_json: bool) -> None:
    """Show the llama.cpp binaries in use and their version."""
    tc = find_toolchain()
    info = {
        "version": tc.version(),
        "rpc_server": tc.rpc_server,
        "llama_server": tc.llama_server,
        "llama_bench": tc.llama_bench,
    }
    if as_json:
        echo_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key:13} {value if value is not None else '-'}")
