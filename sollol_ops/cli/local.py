"""`sollol-ops local start|stop|status`: rpc-servers on this machine for the demo, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import click

from sollol_ops import procs
from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.cluster import local as local_cluster
from sollol_ops.cluster.facts import DEFAULT_PORT
from sollol_ops.serve import statefile
from sollol_ops.ui import echo_json, echo_table


@click.group()
def local() -> None:
    """Run a cluster of rpc-servers on this machine (for trying sollol-ops without hosts)."""


@local.command()
@click.argument("count", type=click.IntRange(1, 64), default=2)
@options.host_option("Address to bind (loopback by default).")
@click.option("--base-port", type=click.IntRange(1024, 65535), default=DEFAULT_PORT, show_default=True)
@options.threads_option("Threads per rpc-server (default: cores / COUNT).", short=False)
@click.option("--no-cache", is_flag=True, help="Start rpc-servers without their tensor cache (-c).")
@options.state_dir_option("State directory (default: XDG state).")
@options.json_option()
@click.pass_obj
def start(
    ctx: Context,
    count: int,
    host: str,
    base_port: int,
    threads: int | None,
    no_cache: bool,
    root: Path | None,
    as_json: bool,
) -> None:
    """Start COUNT rpc-servers on consecutive ports and write a matching inventory."""
    if warning := local_cluster.exposure_warning(host):
        statefile.warn_stderr(warning)
    cluster = local_cluster.start(count, host=host, base_port=base_port, threads=threads, cache=not no_cache, root=root)
    if as_json:
        echo_json(cluster)
        return
    click.echo(f"started {count} rpc-server(s), {cluster.threads} thread(s) each: {','.join(cluster.endpoints)}")
    click.echo(f"inventory: {cluster.inventory}")
    click.echo(f"next: sollol-ops -i {cluster.inventory} up MODEL")


@local.command()
@options.state_dir_option()
@click.pass_obj
def stop(ctx: Context, root: Path | None) -> None:
    """Stop the local rpc-servers."""
    n = local_cluster.stop(root)
    click.echo(f"stopped {n} rpc-server(s)" if n else "no local rpc-servers were running")


@local.command("status")
@options.state_dir_option()
@options.json_option()
@click.pass_obj
def local_status(ctx: Context, root: Path | None, as_json: bool) -> None:
    """Show the local rpc-servers."""
    cluster = local_cluster.load(root)
    rows = [] if cluster is None else cluster.servers
    if as_json:
        echo_json({"cluster": cluster, "alive": [procs.is_ours(s.pid, s.start_time, s.argv0) for s in rows]})
        return
    if cluster is None:
        click.echo("no local cluster")
        return
    echo_table(
        ["ENDPOINT", "PID", "ALIVE", "LOG"],
        [
            [ep, s.pid, procs.is_ours(s.pid, s.start_time, s.argv0), s.log]
            for ep, s in zip(cluster.endpoints, rows, strict=True)
        ],
    )
    click.echo(f"inventory: {cluster.inventory}")
