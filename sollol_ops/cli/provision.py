"""`sollol-ops provision`: run the Ansible playbook on the CLI's inventory with live progress."""

from __future__ import annotations

import re
from pathlib import Path

import click

from sollol_ops.cli.context import Context
from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.errors import InventoryError, ProvisionError, UsageError
from sollol_ops.ui import echo_table

_MARK = {"ok": "ok", "changed": "changed", "failed": "FAILED", "unreachable": "UNREACHABLE", "skipped": "skipped"}
# A group name that is one name in an Ansible host pattern (no `:`, `,`, `!`, `&`, wildcards or templates).
_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@click.command()
@click.option("--check", is_flag=True, help="Dry run (ansible --check --diff): report what would change.")
@click.option(
    "--syntax-check", "syntax_check", is_flag=True, help="Only check the playbook's syntax (ansible --syntax-check)."
)
@click.option(
    "--list-hosts",
    "list_hosts",
    is_flag=True,
    help="Only list the hosts each play would run on (ansible --list-hosts).",
)
@click.option("--limit", metavar="PATTERN", help="Only these hosts/groups (ansible --limit).")
@click.option("--tags", metavar="TAGS", help="Only tasks with these tags, comma-separated (ansible --tags).")
@click.option(
    "--playbook",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Playbook to run (default: the site playbook that came with sollol-ops).",
)
@click.option(
    "--coordinator-wheel",
    "wheel",
    metavar="WHEEL",
    type=click.Path(dir_okay=False, path_type=Path),
    help="sollol-ops wheel the coordinator installs (default: one built from this checkout; needed when "
    "sollol-ops itself was installed from a wheel).",
)
@click.pass_obj
def provision(
    ctx: Context,
    check: bool,
    syntax_check: bool,
    list_hosts: bool,
    limit: str | None,
    tags: str | None,
    playbook: Path | None,
    wheel: Path | None,
) -> None:
    """Provision the cluster: llama.cpp everywhere, rpc-servers on the workers, sollol-ops on the coordinator.

    The playbooks get the CLI's --rpc-group/--coordinator-group as sollol_rpc_group/sollol_coordinator_group.
    """
    from sollol_ops.cluster.provision import TaskEvent, default_playbook, inspect_playbook, run_playbook, summary_rows

    flags = {"--check": check, "--syntax-check": syntax_check, "--list-hosts": list_hosts}
    modes = [name for name, on in flags.items() if on]
    if len(modes) > 1:
        raise UsageError(f"provision: {' and '.join(modes)} exclude each other; pick one")
    inventory = ctx.inventory_path()
    extravars: dict[str, str] = _group_vars(ctx, inventory)
    if wheel is not None:
        if not wheel.is_file() or not re.match(r"^sollol_ops-.+\.whl$", wheel.name):
            raise UsageError(f"--coordinator-wheel {wheel}: no such sollol-ops wheel (sollol_ops-VERSION-*.whl)")
        extravars["coordinator_wheel"] = str(wheel.resolve())
    book = playbook or default_playbook()
    if not book.is_file():
        raise ProvisionError(f"playbook {book} does not exist")

    if syntax_check or list_hosts:
        action = "syntax-check" if syntax_check else "list-hosts"
        out = inspect_playbook(book, inventory, action, limit=limit, tags=tags, extravars=extravars)
        click.echo(out.strip("\n"))
        return

    click.echo(f"provision: {book} on {inventory}{' (check mode)' if check else ''}", err=True)

    def on_event(ev: TaskEvent) -> None:
        if ev.kind == "play":
            click.echo(f"PLAY {ev.task}", err=True)
        elif ev.kind == "task":
            click.echo(f"  TASK {ev.task}", err=True)
        elif ev.kind != "skipped" or ctx.verbose:
            extra = f": {ev.message}" if ev.message else ""
            click.echo(f"    {ev.host}: {_MARK[ev.kind]}{extra}", err=True)

    result = run_playbook(book, inventory, check=check, limit=limit, tags=tags, extravars=extravars, on_event=on_event)
    click.echo("")
    echo_table(
        ["HOST", "OK", "CHANGED", "FAILED", "UNREACHABLE", "SKIPPED"], summary_rows(result), right=[1, 2, 3, 4, 5]
    )
    if not result.success:
        bad = [h.host for h in result.hosts if not h.success]
        raise ProvisionError(f"provision failed (ansible exit {result.rc})" + (f" on {', '.join(bad)}" if bad else ""))


def _group_vars(ctx: Context, inventory: Path) -> dict[str, str]:
    """sollol_rpc_group/sollol_coordinator_group for the playbooks; a group named on purpose must exist."""
    chosen = [
        ("--rpc-group", ctx.rpc_group, cluster_vars.RPC_GROUP),
        ("--coordinator-group", ctx.coordinator_group, cluster_vars.COORDINATOR_GROUP),
    ]
    for option, name, _ in chosen:
        if not _GROUP_NAME.match(name):
            raise UsageError(f"{option} {name!r} is not an inventory group name (letters, digits, _ and -)")
    renamed = [(option, name) for option, name, default in chosen if name != default]
    if renamed:
        from sollol_ops.cluster.ansible_inventory import ansible_inventory_list

        data = ansible_inventory_list(inventory)
        groups = {k for k in data if k != "_meta"}
        groups |= {c for v in data.values() if isinstance(v, dict) for c in v.get("children", [])}
        for option, name in renamed:
            if name not in groups:
                raise InventoryError(
                    f"{option} {name}: inventory {inventory} has no such group "
                    f"(groups: {', '.join(sorted(groups - {'all', 'ungrouped'})) or 'none'})"
                )
    return {cluster_vars.RPC_GROUP_VAR: ctx.rpc_group, cluster_vars.COORDINATOR_GROUP_VAR: ctx.coordinator_group}
