"""`sollol-ops inventory import FILE`: an inventory from the original system's ~/.synapticllamas.json."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sollol_ops.cli import options
from sollol_ops.cluster import importer
from sollol_ops.ui import echo_json


@click.group()
def inventory() -> None:
    """Inventory helpers."""


@inventory.command("import")
@click.argument("source", type=click.Path(path_type=Path), default=str(Path("~/.synapticllamas.json").expanduser()))
@click.option(
    "-o", "--output", default="inventory.ini", show_default=True, help="Where to write the inventory ('-': stdout)."
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@options.json_option("Print what was imported as JSON.")
def import_(source: Path, output: str, force: bool, as_json: bool) -> None:
    """Write an inventory from SynapticLlamas settings (SOURCE, default ~/.synapticllamas.json): rpc_backends
    to [rpc_servers], Ollama nodes (its ollama_nodes, else $OLLAMA_NODES) to [ollama_nodes], the two mode
    flags to sollol_gateway_mode. Unknown keys are reported and ignored."""
    to_stdout = output == "-"
    imported = importer.import_file(source, None if to_stdout else Path(output), force)
    if to_stdout:
        sys.stdout.write(importer.render(imported, source))
    for note in imported.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        echo_json(imported)
    elif not to_stdout:
        click.echo(
            f"wrote {output}: mode {imported.mode}, {sum(len(p) for p in imported.rpc.values())} rpc-server(s), "
            f"{len(imported.ollama)} Ollama node(s)"
        )
