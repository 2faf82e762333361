"""`sollol-ops resolve MODEL`: the GGUF blob behind an Ollama model name."""

from __future__ import annotations

import click

from sollol_ops.cli import options
from sollol_ops.model.ollama import resolve_model
from sollol_ops.ui import echo_json


@click.command("resolve")
@click.argument("model")
@options.ollama_models_option(options.STORE_FIRST_HELP)
@click.option("--verify", is_flag=True, help="Re-hash the blob and compare it with the manifest digest.")
@options.json_option("Print everything known about the model as JSON.")
def resolve(model: str, ollama_models: str | None, verify: bool, as_json: bool) -> None:
    """Print the path of MODEL's GGUF blob (e.g. smollm2:135m) after checking it."""
    found = resolve_model(model, ollama_models, verify=verify)
    if as_json:
        echo_json(found)
    else:
        click.echo(str(found.blob))
