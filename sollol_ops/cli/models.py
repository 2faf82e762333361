"""`sollol-ops models`: the models installed in the Ollama stores, with their GGUF facts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import click

from sollol_ops.cli import options
from sollol_ops.errors import StoreError
from sollol_ops.model.ollama import InstalledModel, list_models
from sollol_ops.model.roots import candidate_roots, store_roots
from sollol_ops.ui import echo_json, echo_table, human_bytes, to_jsonable

HEADERS = ("MODEL", "SIZE", "ARCH", "LAYERS", "QUANT", "ROOT")


def _row(m: InstalledModel, with_error: bool) -> tuple[object, ...]:
    name = f"{m.ref} (shadowed)" if m.shadowed else m.ref
    row: tuple[object, ...] = (
        name,
        human_bytes(m.size),
        m.architecture,
        m.block_count,
        m.file_type_name,
        m.root,
    )
    return (*row, m.error) if with_error else row


def staged_by_model() -> dict[str, list[dict[str, Any]]]:
    """The staging ledger's rows by model ref (sollol-ops stage)."""
    from sollol_ops.stage import ledger

    out: dict[str, list[dict[str, Any]]] = {}
    for row in ledger.staged_summary(ledger.load_ledger()):
        out.setdefault(str(row["model"]), []).append(row)
    return out


def _broken_summary(entries: Sequence[InstalledModel]) -> StoreError:
    broken = [m for m in entries if m.error]
    return StoreError(
        f"{len(broken)} of {len(entries)} installed models are broken (see the ERROR column); first: {broken[0].error}"
    )


@click.command("models")
@options.ollama_models_option(options.STORE_FIRST_HELP)
@options.json_option("Print the listing as JSON.")
def models(ollama_models: str | None, as_json: bool) -> None:
    """List models in the Ollama stores (exit status 4 when any entry is broken)."""
    roots = store_roots(ollama_models, os.environ)
    entries = list_models(roots, read_headers=True)
    staged = staged_by_model()
    if as_json:
        echo_json([{**to_jsonable(m), "staged": staged.get(m.ref, [])} for m in entries])
    else:
        with_error = any(m.error for m in entries)
        headers = (*HEADERS, "ERROR") if with_error else HEADERS
        echo_table(headers, [_row(m, with_error) for m in entries], right=(1, 3))
        rows = [r for m in entries for r in staged.get(m.ref, [])]
        if rows:
            from sollol_ops.cli.render import echo_staged  # only then: it imports the coordinator's modules

            click.echo("")
            echo_staged(rows)
        if not entries:
            searched = ", ".join(str(p) for p in candidate_roots(ollama_models, os.environ))
            click.echo(f"no models found (searched: {searched})", err=True)
    if any(m.error for m in entries):
        raise _broken_summary(entries)
