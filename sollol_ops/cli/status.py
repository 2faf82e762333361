"""`sollol-ops status`: the coordinator and every backend of the inventory."""

from __future__ import annotations

import click

from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.cli.render import echo_distribution, echo_staged
from sollol_ops.serve import status_report
from sollol_ops.serve.coordinator import CoordinatorPhase
from sollol_ops.ui import echo_json, echo_table

MIB = 1 << 20


@click.command()
@options.json_option()
@click.option(
    "--check",
    is_flag=True,
    help="Exit 14, naming each problem on stderr, unless every backend is ready or serving and the coordinator "
    "(if one was started) is serving.",
)
@click.option("--require-coordinator", is_flag=True, help="With --check: also fail when no coordinator runs.")
@options.stall_timeout_option(
    3600, 10, "Call a coordinator stalled when its model loop does not answer for this many seconds."
)
@click.pass_obj
def status(ctx: Context, as_json: bool, check: bool, require_coordinator: bool, stall_timeout: float) -> None:
    """Coordinator (serving, loading, stalled, exited; model, endpoint, layers) and backends
    (ready/busy/serving/stalled/down/incompatible)."""
    report = status_report.status(ctx.cluster(), stall_timeout=stall_timeout)
    if as_json:
        echo_json(report)
    else:
        _render(report)
    if check:
        report.check(require_coordinator)


def _render(report: status_report.StatusReport) -> None:
    c = report.coordinator
    if c.state is CoordinatorPhase.NOT_RUNNING:
        click.echo("coordinator: not running")
    elif c.state is CoordinatorPhase.EXITED:
        click.echo(f"coordinator: {c.model} EXITED ({c.detail}); `sollol-ops down` clears it")
    else:
        exposed = "  (listens beyond loopback)" if c.exposed else ""
        degraded = "  DEGRADED" if c.degraded else ""
        click.echo(
            f"coordinator: {c.model} at {c.endpoint}  listening on {c.listen}{exposed}  pid {c.pid}  {c.state}"
            f"{degraded}  up {c.uptime_s:.0f}s"
        )
        if c.state is not CoordinatorPhase.SERVING:
            click.echo(f"  {c.detail}")
    if c.degraded and c.state is not CoordinatorPhase.NOT_RUNNING:
        click.echo(f"  {c.degraded_note} (sollol_skip_unhealthy)")
    if c.draft is not None and c.state is not CoordinatorPhase.NOT_RUNNING:
        click.echo(f"  {c.draft.describe()}")
    if (
        c.state not in (CoordinatorPhase.NOT_RUNNING, CoordinatorPhase.EXITED)
        and c.distribution
        and c.distribution.devices
    ):
        echo_distribution(c.distribution)
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
    if report.staged:
        click.echo("")
        echo_staged(report.staged)
    if report.incident is not None:
        click.echo(f"\nlast incident: {report.incident.describe()}")
