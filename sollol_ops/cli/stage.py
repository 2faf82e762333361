"""`sollol-ops stage [MODEL]`: put each worker's share of MODEL's weights into its rpc-server's tensor cache
ahead of the first load; --verify and --prune look after what is staged (logic in sollol_ops.stage)."""

from __future__ import annotations

from pathlib import Path

import click

from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.errors import SollolError, UsageError
from sollol_ops.stage import cachedir, ledger, shares, staging, upkeep
from sollol_ops.ui import echo_json, echo_table, human_bytes


@click.command()
@click.argument("model", required=False)
@options.ctx_size_option("The context size `up` will use (placement depends on it).")
@options.ollama_models_option()
@click.option(
    "--cache-dir",
    "cache_dirs",
    multiple=True,
    metavar="ENDPOINT=DIR",
    help="An rpc-server's cache directory ($LLAMA_CACHE/rpc), when it cannot be read from its process.",
)
@click.option(
    "--via-ansible",
    is_flag=True,
    help="Send each worker its pack and stage there (playbooks/stage.yml): for workers on other hosts.",
)
@options.dry_run_option("Show what each rpc-server would receive; send nothing.")
@click.option("--verify", is_flag=True, help="Re-hash staged files (sha256); remove those whose content changed.")
@click.option("--prune", is_flag=True, help="Remove cache files no ledger entry needs (16-hex-digit files only).")
@options.json_option("Print the outcome as JSON.")
@click.pass_obj
def stage(
    ctx: Context,
    model: str | None,
    ctx_size: int,
    ollama_models: str | None,
    cache_dirs: tuple[str, ...],
    via_ansible: bool,
    dry_run: bool,
    verify: bool,
    prune: bool,
    as_json: bool,
) -> None:
    """Stage MODEL's weights into the rpc-servers' -c caches, so that the first `up` sends hashes, not tensors.

    Run it while no coordinator holds the rpc-servers (each serves one client at a time).
    """
    dirs = cachedir.parse_cache_dirs(cache_dirs)
    if model is None and not (verify or prune):
        raise UsageError("name a MODEL to stage, or pass --verify and/or --prune")
    out: dict[str, object] = {}
    if model is not None:
        prepared = staging.prepare(model, ctx.cluster().backends, ctx_size, ollama_models)
        out["model"] = prepared.model
        out["plan"] = shares.describe_plan(prepared.shares)
        if not as_json:
            echo_table(
                ["ENDPOINT", "LAYERS", "OUTPUT", "TENSORS", "CACHED", "CACHED BYTES", "ALWAYS SENT"],
                [
                    [
                        p["endpoint"],
                        p["layers"],
                        "yes" if p["output"] else "-",
                        p["tensors"],
                        p["cached_tensors"],
                        human_bytes(p["cached_bytes"]),
                        human_bytes(p["always_sent_bytes"]),
                    ]  # type: ignore[arg-type]
                    for p in out["plan"]  # type: ignore[union-attr]
                ],
                right=(3, 4, 5, 6),
            )
        if not dry_run:
            if via_ansible:
                cluster = ctx.cluster()
                results = staging.stage_via_ansible(prepared, cluster.backends, cluster.inventory, dirs)
            else:
                results = staging.stage_local(
                    prepared.model, prepared.digest, prepared.blob, prepared.shares, prepared.table, dirs
                )
            out["staged"] = [
                {
                    "endpoint": r.endpoint,
                    "cache_dir": r.cache_dir,
                    "files": [vars(f) for f in r.files],
                    "new_bytes": r.new_bytes,
                }
                for r in results
            ]
            if not as_json:
                for r in results:
                    click.echo(
                        f"staged {r.endpoint}: {len(r.files)} file(s), {human_bytes(sum(f.size for f in r.files))} "
                        f"({human_bytes(r.new_bytes)} new) in {r.cache_dir}, verified (sha256)"
                    )
    if verify:
        rows = upkeep.verify(model=out.get("model"), inventory=_remote_inventory(ctx))  # type: ignore[arg-type]
        out["verify"] = rows
        if not as_json:
            bad = [r for r in rows if r.state not in ("ok", "remote")]
            remote = sum(r.state == "remote" for r in rows)
            click.echo(
                f"verified {len(rows)} staged file(s): {len(rows) - len(bad) - remote} ok, {len(bad)} not, "
                f"{remote} on workers staged through Ansible not checked (no inventory)"
            )
            for r in bad:
                click.echo(f"  {r.endpoint} {r.file}: {r.state}")
    if prune:
        removed = upkeep.prune(dirs, inventory=_remote_inventory(ctx))
        out["pruned"] = removed
        if not as_json:
            click.echo(f"pruned {len(removed)} cache file(s), {human_bytes(sum(r.size for r in removed))}")
            for r in removed:
                click.echo(f"  {r.endpoint} {r.cache_dir}/{r.file}")
    if as_json:
        echo_json(out)


def _remote_inventory(ctx: Context) -> Path | None:
    """The inventory, when the ledger has entries staged through Ansible (verify/prune reach them through it)."""
    if not any(e.where.startswith("ansible:") for e in ledger.load_ledger().entries):
        return None
    try:
        return ctx.inventory_path()
    except SollolError:
        return None
