"""`sollol-ops gateway`: one endpoint, Ollama and OpenAI APIs, each request routed by model to the pool
(inventory group ollama_nodes) or to the sharded coordinator (docs/gateway.md)."""

from __future__ import annotations

import click

from sollol_ops import procs
from sollol_ops.cli.context import Context
from sollol_ops.errors import InventoryError
from sollol_ops.gateway import server
from sollol_ops.gateway.pool import PoolSettings
from sollol_ops.inventory import GatewaySettings, ansible_inventory_list, gateway_settings_from_inventory_data


def _settings(ctx: Context) -> GatewaySettings:
    """The pool, mode and pins from the inventory; an inventory that cannot be found at all (no -i, no
    $SOLLOL_INVENTORY, no ansible.cfg, no ./inventory.ini) means no pool: shard mode."""
    import os

    try:
        path = ctx.inventory_path()
    except InventoryError:
        if ctx.inventory_option or os.environ.get("SOLLOL_INVENTORY"):
            raise
        return GatewaySettings([], [], None, {})
    data = ansible_inventory_list(path)
    return gateway_settings_from_inventory_data(data, path, rpc_group=ctx.rpc_group)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=server.DEFAULT_PORT, show_default=True)
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
@click.option("--ollama-models", metavar="PATH", help="The coordinator's Ollama store (default: $OLLAMA_MODELS, ...).")
@click.option(
    "--max-body-mib", type=click.IntRange(1, 1024), default=32, show_default=True, help="Largest request body."
)
@click.option("--health-interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True)
@click.option("--health-max-backoff", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True)
@click.option("--breaker-failures", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--breaker-cooldown", type=click.FloatRange(0, 3600), default=30.0, show_default=True)
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
) -> None:
    """Serve the Ollama and OpenAI APIs on one port, routing each model to the pool or the coordinator."""
    settings = _settings(ctx)
    pool = PoolSettings(
        health_interval=health_interval,
        backoff_max=health_max_backoff,
        breaker_failures=breaker_failures,
        breaker_cooldown=breaker_cooldown,
    )
    opts = server.ServeOptions(host, port, mode, api_key, ollama_models, max_body_mib << 20, pool)
    gw = server.build(opts, settings)
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
    server.serve(gw, sock)
