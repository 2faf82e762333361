"""`sollol-ops provision`: run the Ansible playbook on the CLI's inventory with live progress."""

from __future__ import annotations

from pathlib import Path

import click

from sollol_ops.cli.context import Context
from sollol_ops.errors import ProvisionError
from sollol_ops.ui import echo_table

_MARK = {"ok": "ok", "changed": "changed", "failed": "FAILED", "unreachable": "UNREACHABLE", "skipped": "skipped"}


@click.command()
@click.option("--check", is_flag=True, help="Dry run (ansible --check --diff): report what would change.")
@click.option("--limit", metavar="PATTERN", help="Only these hosts/groups (ansible --limit).")
@click.option("--tags", metavar="TAGS", help="Only tasks with these tags, comma-separated (ansible --tags).")
@click.option(
    "--playbook",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Playbook to run (default: playbooks/site.yml of this checkout).",
)
@click.pass_obj
def provision(ctx: Context, check: bool, limit: str | None, tags: str | None, playbook: Path | None) -> None:
    """Provision the cluster: llama.cpp everywhere, rpc-servers on the workers, sollol-ops on the coordinator."""
    from sollol_ops.provision import TaskEvent, default_playbook, run_playbook, summary_rows

    inventory = ctx.inventory_path()
    book = playbook or default_playbook()
    if not book.is_file():
        raise ProvisionError(f"playbook {book} does not exist")
    click.echo(f"provision: {book} on {inventory}{' (check mode)' if check else ''}", err=True)

    def on_event(ev: TaskEvent) -> None:
        if ev.kind == "play":
            click.echo(f"PLAY {ev.task}", err=True)
        elif ev.kind == "task":
            click.echo(f"  TASK {ev.task}", err=True)
        elif ev.kind != "skipped" or ctx.verbose:
            extra = f": {ev.message}" if ev.message else ""
            click.echo(f"    {ev.host}: {_MARK[ev.kind]}{extra}", err=True)

    result = run_playbook(book, inventory, check=check, limit=limit, tags=tags, on_event=on_event)
    click.echo("")
    echo_table(
        ["HOST", "OK", "CHANGED", "FAILED", "UNREACHABLE", "SKIPPED"], summary_rows(result), right=[1, 2, 3, 4, 5]
    )
    if not result.success:
        bad = [h.host for h in result.hosts if not h.success]
        raise ProvisionError(f"provision failed (ansible exit {result.rc})" + (f" on {', '.join(bad)}" if bad else ""))
