"""`sollol-ops doctor [MODEL]`: check the cluster the way its troubleshooting list says, one advice line each."""

from __future__ import annotations

import click

from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.cli.render import CliReporter
from sollol_ops.cluster import doctor as lib
from sollol_ops.ui import echo_json, echo_table

_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def _rate(value: str) -> float:
    text = value.strip().lower()
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * factor
            except ValueError:
                break
    raise click.BadParameter(f"{value!r}: give a rate like 1gbit, 500mbit")


@click.command()
@click.argument("model", required=False)
@options.ollama_models_option("Ollama store root (as for `up`).")
@options.ctx_size_option()
@click.option("--min-link", default="1gbit", show_default=True, help="Slowest acceptable link to a worker.")
@click.option(
    "--link-mib", type=click.IntRange(1, 1024), default=32, show_default=True, help="MiB sent to measure each link."
)
@click.option("--no-hosts", is_flag=True, help="Do not read units and firewall through Ansible.")
@options.json_option()
@click.pass_obj
def doctor(
    ctx: Context,
    model: str | None,
    ollama_models: str | None,
    ctx_size: int,
    min_link: str,
    link_mib: int,
    no_hosts: bool,
    as_json: bool,
) -> None:
    """Check every worker (reachable, same protocol, unit, firewall, link) and, given MODEL, that it fits.
    Exits 14 when a check fails."""
    opts = lib.DoctorOptions(
        model=model,
        ollama_models=ollama_models,
        n_ctx=ctx_size,
        link_bytes=link_mib << 20,
        min_link_bps=_rate(min_link),
        hosts=not no_hosts,
    )
    reporter = CliReporter(quiet=as_json, verbose=ctx.verbose)
    report = lib.run(ctx.cluster(), opts, on_step=reporter.step)
    if as_json:
        echo_json(report)
    else:
        echo_table(
            ["CHECK", "TARGET", "STATUS", "DETAIL"], [[c.check, c.target, c.status, c.detail] for c in report.checks]
        )
        advice = [c for c in report.checks if c.advice and c.status in (lib.FAIL, lib.WARN)]
        if advice:
            click.echo("")
            for c in advice:
                click.echo(f"{c.status.upper()} {c.check} {c.target}: {c.advice}")
    report.raise_if_failed()
