"""`sollol-ops plan MODEL [--measure]`: the placement `up` would use, and why (measured speed or memory)."""

from __future__ import annotations

import click

from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.cli.render import CliReporter
from sollol_ops.cluster.speed import DEFAULT_WEIGHT_BYTES
from sollol_ops.serve import plan_report
from sollol_ops.ui import echo_json, echo_table

MIB = 1 << 20


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _per_token(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.2f} ms/token ({1000 / ms:,.1f} tok/s)" if ms > 0 else f"{ms:.2f} ms/token"


@click.command()
@click.argument("model")
@options.ollama_models_option("Ollama store root (as for `up`).")
@options.ctx_size_option()
@click.option("--measure", is_flag=True, help="Measure every worker's compute speed and link first, and cache them.")
@click.option(
    "--measure-mib",
    type=click.IntRange(1, 1024),
    default=DEFAULT_WEIGHT_BYTES // MIB,
    show_default=True,
    help="MiB of weights in the timed graph of each compute measurement.",
)
@options.skip_unhealthy_option("Plan without down/busy/incompatible backends (as `up --skip-unhealthy`).")
@click.option("--coordinator-memory", type=click.IntRange(0, 1 << 40), metavar="MIB", help="As for `up`.")
@click.option("--coordinator-device", metavar="NAME", help="As for `up`.")
@options.json_option()
@click.pass_obj
def plan(
    ctx: Context,
    model: str,
    ollama_models: str | None,
    ctx_size: int,
    measure: bool,
    measure_mib: int,
    skip_unhealthy: bool | None,
    coordinator_memory: int | None,
    coordinator_device: str | None,
    as_json: bool,
) -> None:
    """Show how MODEL's layers would be split: per worker its memory, measured speed and link, the layers of the
    speed split and of llama.cpp's memory split, their predicted ms/token, and who is left out and why."""
    req = plan_report.PlanRequest(
        model,
        ollama_models,
        ctx_size,
        measure,
        skip_unhealthy,
        coordinator_memory,
        coordinator_device,
        weight_bytes=measure_mib * MIB,
    )
    reporter = CliReporter(quiet=as_json, verbose=ctx.verbose)
    report = plan_report.plan(req, ctx.cluster(), reporter)
    reporter.done()
    if as_json:
        echo_json(report)
        return
    click.echo(
        f"model {report.model}: {report.layers} layers + output, {report.file_type} (speed measured as "
        f"{report.measured_as}, build {report.build})"
    )
    for line in report.skipped:
        click.echo(f"skipping {line}")
    echo_table(
        ["SLOT", "ENDPOINT", "USABLE MiB", "ms/GiB", "us/NODE", "RTT ms", "MB/s", "MEMORY", "SPEED", "NOTE"],
        [
            [
                w.slot,
                w.endpoint,
                f"{w.usable_bytes / MIB:,.0f}",
                _num(w.ms_per_gib, ",.1f"),
                _num(w.node_us, ".1f"),
                _num(w.rtt_ms, ".3f"),
                _num(w.mb_per_s, ",.0f"),
                w.memory_layers,
                "-" if w.speed_layers is None else w.speed_layers,
                w.note,
            ]
            for w in report.workers
        ],
        right=(2, 3, 4, 5, 6, 7, 8),
    )
    click.echo("(MEMORY, SPEED: layers of the n_layer + 1, output included, in each split; ms/GiB: compute time per")
    click.echo(" GiB of weights per token, lower is faster; RTT and MB/s: the link, as `doctor` measures it)")
    if report.unmeasured:
        click.echo(
            f"\nnot measured: {', '.join(report.unmeasured)}; planned by memory "
            f"(measure with: sollol-ops plan {report.model} --measure)"
        )
    else:
        speed, memory = _per_token(report.speed_ms), _per_token(report.memory_ms)
        click.echo(f"\npredicted: speed split {speed}, memory split {memory}")
        if report.speed_ms and report.memory_ms:
            ratio = report.memory_ms / report.speed_ms
            click.echo(f"  the speed split is predicted {ratio:.2f}x the memory split's speed")
    for line in report.left_out:
        click.echo(line)
    click.echo(
        f"up uses the {report.used} split (sollol_placement={report.placement.value}): --rpc {','.join(report.rpc)} "
        f"--device {','.join(report.devices)} --tensor-split {','.join(f'{s:g}' for s in report.tensor_split)}"
    )
