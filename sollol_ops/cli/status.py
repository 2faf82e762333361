"""`sollol-ops status`: the coordinator and every backend of the inventory."""

from __future__ import annotations

import click

from sollol_ops import serve
from sollol_ops.cli.context import Context
from sollol_ops.cli.render import echo_distribution
from sollol_ops.ui import echo_json, echo_table

MIB = 1 << 20


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(ctx: Context, as_json: bool) -> None:
    """Coordinator (alive, healthy, model, endpoint, layers) and backends (ready/busy/serving/down/incompatible)."""
    report = serve.status(ctx.cluster())
    if as_json:
        echo_json(report)
        return
    c = report.coordinator
    if c.running:
        health = "healthy" if c.healthy else "loading/unhealthy"
        click.echo(f"coordinator: {c.model} at {c.endpoint}  pid {c.pid}  {health}  up {c.uptime_s:.0f}s")
        if c.distribution and c.distribution.devices:
            echo_distribution(c.distribution)
    else:
        click.echo("coordinator: not running")
    click.echo("")
    echo_table(
        ["HOST", "ENDPOINT", "STATUS", "VERSION", "DEVICES", "FREE / TOTAL", "DETAIL"],
        [
            [
                b.host,
                b.endpoint,
                b.status,
                b.version,
                len(b.devices) if b.devices else "-",
                ", ".join(f"{d.free / MIB:,.0f}/{d.total / MIB:,.0f} MiB" for d in b.devices) or "-",
                b.detail,
            ]
            for b in report.backends
        ],
    )
