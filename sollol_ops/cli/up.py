"""`sollol-ops up MODEL`: serve a model from the Ollama store sharded across the inventory's rpc-servers."""

from __future__ import annotations

from typing import Any

import click

from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.cli.render import CliReporter, echo_distribution, echo_plan
from sollol_ops.cluster.inventory import device_name_problem
from sollol_ops.errors import UsageError
from sollol_ops.serve import coordinator, heal, lifecycle
from sollol_ops.serve.command import StartOptions
from sollol_ops.timings import FIRST_PHASE, PhaseClock, wanted
from sollol_ops.ui import echo_json, echo_table


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("model")
@options.host_option("Address the OpenAI endpoint listens on.")
@options.port_option("--port", 8080)
@options.ctx_size_option()
@options.parallel_option("Parallel slots.")
@options.threads_option("Coordinator threads (default: all cores).")
@options.ollama_models_option()
@options.dry_run_option("Check backends and print the placement plan, start nothing.")
@click.option("--foreground", is_flag=True, help="Run attached (for a systemd unit), forwarding signals.")
@click.option("--replace", is_flag=True, help="Stop a coordinator serving another model first.")
@options.skip_unhealthy_option(
    "Start degraded without down/busy/incompatible backends (if the model fits the rest) instead of refusing "
    "(default: the inventory's sollol_skip_unhealthy, else refuse)."
)
@options.load_timeout_option("--timeout", "Seconds to wait for ready.")
@options.server_args_option()
@click.option(
    "--coordinator-memory",
    type=click.IntRange(0, 1 << 40),
    metavar="MIB",
    help="Memory this machine offers to the model's layers, MiB; 0: none (default: sollol_coordinator_memory_mib).",
)
@click.option(
    "--coordinator-device",
    metavar="NAME",
    help="Which of its devices offers it: CPU, or one `llama-server --list-devices` names (default: "
    "sollol_coordinator_device, CPU).",
)
@click.option(
    "--draft",
    metavar="MODEL|ngram|none",
    help="Speculative decoding: a small model of the same vocabulary drafts on this machine (its CPU, or its "
    "GPU when --coordinator-device is one), or `ngram` drafts from the text so far, or `none` (default: the "
    "inventory's sollol_draft_models for MODEL, else none).",
)
@options.json_option("Print the outcome as JSON.")
@click.option("--timings", is_flag=True, help="Print how long each phase took to stderr (also: SOLLOL_OPS_TRACE=1).")
@click.pass_obj
def up(ctx: Context, foreground: bool, as_json: bool, timings: bool, **params: Any) -> None:
    """Serve MODEL (e.g. codellama:13b) from the Ollama store across the inventory's rpc-servers."""
    clock = PhaseClock(enabled=wanted(timings))
    clock.mark(FIRST_PHASE)
    try:
        _up(ctx, _request(**params), foreground, as_json, clock)
    finally:
        clock.mark("output")
        clock.report()


def _request(
    host: str,
    port: int,
    ctx_size: int,
    parallel: int,
    threads: int | None,
    server_args: tuple[str, ...],
    coordinator_memory: int | None,
    **fields: Any,
) -> lifecycle.UpRequest:
    """The request `up`'s options make: the llama-server ones as StartOptions, the rest by the same name."""
    opts = StartOptions(
        host=host, port=port, n_ctx=ctx_size, parallel=parallel, threads=threads, extra_args=list(server_args)
    )
    return lifecycle.UpRequest(opts=opts, coordinator_memory_mib=coordinator_memory, **fields)


def _up(ctx: Context, req: lifecycle.UpRequest, foreground: bool, as_json: bool, clock: PhaseClock) -> None:
    if req.coordinator_device is not None and (problem := device_name_problem(req.coordinator_device)) is not None:
        raise UsageError(f"--coordinator-device {problem}")
    reporter = CliReporter(quiet=as_json, verbose=ctx.verbose, clock=clock)
    cluster = ctx.cluster()
    clock.mark("inventory")
    outcome = lifecycle.up(req, cluster, reporter, foreground=foreground)
    reporter.done()
    if as_json:
        echo_json(
            {
                "kind": outcome.kind,
                "model": outcome.model,
                "endpoint": outcome.state.openai_base if outcome.state else None,
                "plan": coordinator.plan_rows(outcome.plan) if outcome.plan else None,
                "skipped": [
                    {"endpoint": b.endpoint, "status": r.status, "detail": r.detail} for b, r in outcome.skipped
                ],
                "command": outcome.command,
                "parallel": outcome.opts.parallel if outcome.opts else None,
                "ready_s": outcome.ready_s,
                "distribution": outcome.distribution,
                "draft": outcome.draft.state(),
            }
        )
        if outcome.kind is not lifecycle.Outcome.FOREGROUND:
            return
    if outcome.kind is lifecycle.Outcome.ALREADY_RUNNING:
        st = outcome.state
        assert st is not None
        click.echo(f"{st.model} is already served at {st.openai_base} (pid {st.pid}); nothing to do")
        return
    if not as_json:
        info = outcome.info
        assert info is not None and outcome.resolved is not None and outcome.plan is not None
        click.echo(
            f"model {outcome.model}: {info.architecture}, {info.block_count} layers, {info.file_type_name}, "
            f"{outcome.resolved.size / 2**20:,.1f} MiB  ({outcome.resolved.blob})"
        )
        for b, r in outcome.skipped:
            click.echo(f"skipping {b.host} ({b.endpoint}): {r.status.value}, {r.detail}")
        echo_plan(outcome.plan, outcome.draft)
        if outcome.opts is not None:
            click.echo(f"parallel slots: {outcome.opts.parallel}, ctx {outcome.opts.n_ctx} each")
    if outcome.kind is lifecycle.Outcome.DRY_RUN:
        click.echo("\ncommand: " + " ".join(outcome.command))
        click.echo("(dry run: nothing started)")
        return
    if outcome.kind is lifecycle.Outcome.FOREGROUND:
        code = heal.run_foreground(
            outcome, req, cluster, reporter, on_ready=lambda st: click.echo(f"ready: {st.openai_base}", err=True)
        )
        raise SystemExit(code)
    st = outcome.state
    assert st is not None and outcome.distribution is not None
    if outcome.replaced:
        click.echo(f"replaced {outcome.replaced}")
    click.echo(f"\nready in {outcome.ready_s:.1f}s: where the layers went")
    echo_distribution(outcome.distribution)
    echo_table(
        ["ENDPOINT", "VALUE"],
        [
            ["OpenAI API", st.openai_base],
            ["listens on", st.listen + ("  (beyond loopback)" if st.exposed else "")],
            ["model", st.model],
            *([["draft", f"{st.draft.choice} ({st.draft.where})"]] if st.draft else []),
            *([["parallel slots", f"{outcome.opts.parallel} x ctx {st.n_ctx}"]] if outcome.opts else []),
            ["pid", st.pid],
            ["log", st.log],
        ],
    )
    click.echo("\nstop with: sollol-ops down")
