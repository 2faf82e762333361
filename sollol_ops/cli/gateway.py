"""`sollol-ops gateway`: one endpoint, Ollama and OpenAI APIs, each request routed by model to the pool
(inventory group ollama_nodes) or to the sharded coordinator (docs/gateway.md)."""

from __future__ import annotations

import click

from sollol_ops import procs
from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.cluster.ansible_inventory import ansible_inventory_list
from sollol_ops.cluster.facts import GATEWAY_KEEP_ALIVE, GATEWAY_QUEUE_SIZE
from sollol_ops.gateway import server
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.keepalive import parse_keep_alive
from sollol_ops.gateway.ondemand import OnDemandSettings
from sollol_ops.gateway.pool import PoolSettings
from sollol_ops.gateway.settings import GatewaySettings, gateway_settings_from_inventory_data
from sollol_ops.serve.command import StartOptions, check_extra_args


def _settings(ctx: Context) -> GatewaySettings:
    """The pool, mode and pins from the inventory; no inventory at all (Context.found_inventory_path) means no
    pool: shard mode."""
    path = ctx.found_inventory_path()
    if path is None:
        return GatewaySettings([], [], None, {})
    data = ansible_inventory_list(path)
    return gateway_settings_from_inventory_data(data, path, rpc_group=ctx.rpc_group)


@click.command()
@options.host_option("Address to listen on.")
@options.port_option("--port", server.DEFAULT_PORT)
@click.option(
    "--mode",
    type=click.Choice(["shard", "pool", "hybrid"]),
    help="Routing mode (default: the inventory's sollol_gateway_mode, else hybrid when both groups have hosts).",
)
@click.option(
    "--api-key",
    envvar=server.ENV_API_KEY,
    metavar="KEY",
    help=f"Require `Authorization: Bearer KEY` on every route but / and /health (or ${server.ENV_API_KEY}).",
)
@options.ollama_models_option("The coordinator's Ollama store (default: $OLLAMA_MODELS, ...).")
@click.option(
    "--max-body-mib", type=click.IntRange(1, 1024), default=32, show_default=True, help="Largest request body."
)
@click.option("--health-interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True)
@click.option("--health-max-backoff", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True)
@click.option("--breaker-failures", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--breaker-cooldown", type=click.FloatRange(0, 3600), default=30.0, show_default=True)
@click.option(
    "--load-on-demand/--no-load-on-demand",
    default=True,
    show_default=True,
    help="Start the coordinator for a sharded model a request asks for (else only serve one `up` started).",
)
@click.option(
    "--keep-alive",
    default=GATEWAY_KEEP_ALIVE,
    show_default=True,
    help="How long a coordinator the gateway started stays loaded when idle (Ollama's keep_alive; -1: forever).",
)
@click.option(
    "--queue-size",
    type=click.IntRange(0, 100000),
    default=GATEWAY_QUEUE_SIZE,
    show_default=True,
    help="Requests that may wait for a sharded model to load.",
)
@options.port_option("--coordinator-port", 8080, "Port of a coordinator the gateway starts (loopback).")
@options.ctx_size_option("Its context size.")
@options.parallel_option("Its parallel slots.")
@options.threads_option("Its threads (default: all cores).")
@options.load_timeout_option("--load-timeout", "Seconds a load may take.")
@options.skip_unhealthy_option(
    "Load degraded on the healthy backends when some are down, if the model fits them (as "
    "`up --skip-unhealthy`; default: the inventory's sollol_skip_unhealthy, else refuse naming them)."
)
@click.option(
    "--loading-progress/--no-loading-progress",
    default=None,
    help="Streamed requests that wait for a sharded model to load get its progress as reasoning (OpenAI) / "
    "thinking (Ollama) text (default: the inventory's sollol_gateway_loading_progress, else off).",
)
@click.option(
    "--default-num-predict",
    type=click.IntRange(0, 1 << 20),
    metavar="N",
    help="Token limit of a generation request that sets none (Ollama options.num_predict, OpenAI max_tokens); "
    "0: none (default: the inventory's sollol_gateway_default_num_predict, else 2048).",
)
@click.option(
    "--heal",
    type=click.Choice(["auto", "manual"]),
    help="auto: reload a degraded coordinator on its backends once they are back and stop a stalled one; manual: "
    "leave both to `sollol-ops heal` (default: the inventory's sollol_heal, else auto).",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(0.1, 86400),
    help="Seconds with requests in flight and no model step before the coordinator counts as stalled and is "
    "stopped (default: the inventory's sollol_stall_timeout, else 60).",
)
@options.server_args_option()
@click.pass_obj
def gateway(
    ctx: Context,
    host: str,
    port: int,
    mode: str | None,
    api_key: str | None,
    ollama_models: str | None,
    max_body_mib: int,
    health_interval: float,
    health_max_backoff: float,
    breaker_failures: int,
    breaker_cooldown: float,
    load_on_demand: bool,
    keep_alive: str,
    queue_size: int,
    coordinator_port: int,
    ctx_size: int,
    parallel: int,
    threads: int | None,
    load_timeout: float,
    skip_unhealthy: bool | None,
    loading_progress: bool | None,
    default_num_predict: int | None,
    heal: str | None,
    stall_timeout: float | None,
    server_args: tuple[str, ...],
) -> None:
    """Serve the Ollama and OpenAI APIs on one port, routing each model to the pool or the coordinator."""
    settings = _settings(ctx)
    pool = PoolSettings(
        health_interval=health_interval,
        backoff_max=health_max_backoff,
        breaker_failures=breaker_failures,
        breaker_cooldown=breaker_cooldown,
    )
    on_demand = None
    if load_on_demand:
        try:
            default_ka = parse_keep_alive(keep_alive, None)
        except ApiError as exc:
            raise click.BadParameter(exc.message, param_hint="--keep-alive") from None
        check_extra_args(list(server_args))
        start = StartOptions(
            host="127.0.0.1",
            port=coordinator_port,
            n_ctx=ctx_size,
            parallel=parallel,
            threads=threads,
            extra_args=list(server_args),
        )
        on_demand = OnDemandSettings(
            start,
            keep_alive=default_ka,
            queue_size=queue_size,
            load_timeout=load_timeout,
            skip_unhealthy=skip_unhealthy,  # None: the inventory's sollol_skip_unhealthy, read at each load
            loading_progress=settings.loading_progress if loading_progress is None else loading_progress,
            heal=heal,  # None: the inventory's sollol_heal / sollol_stall_timeout, read at each check
            stall_timeout=stall_timeout,
        )
    opts = server.ServeOptions(host, port, mode, api_key, ollama_models, max_body_mib << 20, pool, on_demand)
    opts.default_num_predict = default_num_predict
    gw = server.build(opts, settings, ctx.cluster)
    sock = server.bind(host, port)
    server.setup_logging()
    if not procs.is_loopback(host) and not api_key:
        click.echo(f"sollol-ops: warning: the gateway listens on {host} without an API key (--api-key)", err=True)
    nodes = ", ".join(f"{n.host}={n.url} ({n.api})" for n in settings.pool) or "none"
    click.echo(
        f"sollol-ops gateway on http://{host}:{port} (mode {gw.config.mode}; pool: {nodes}; "
        f"pins: {settings.pins or 'none'})",
        err=True,
    )
    where = f"[{host}]" if ":" in host else host
    key_note = " (it asks for the API key)" if api_key else ""
    click.echo(f"sollol-ops gateway: the cluster's page is at http://{where}:{port}/ui{key_note}", err=True)
    server.serve(gw, sock)
