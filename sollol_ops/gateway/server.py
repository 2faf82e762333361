"""Build the gateway from the inventory and the coordinator's state, and serve it with uvicorn."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster.inventory import Cluster
from sollol_ops.gateway.app import Gateway, GatewayConfig, create_app
from sollol_ops.gateway.catalog import Catalog
from sollol_ops.gateway.errors import GatewayError
from sollol_ops.gateway.ondemand import OnDemand, OnDemandSettings
from sollol_ops.gateway.pool import Pool, PoolSettings
from sollol_ops.gateway.settings import GatewaySettings

DEFAULT_PORT = cluster_vars.GATEWAY_PORT
ENV_API_KEY = cluster_vars.GATEWAY_API_KEY_ENV


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    mode: str | None = None
    api_key: str | None = None
    ollama_models: str | None = None
    max_body: int = 32 << 20
    pool: PoolSettings | None = None
    on_demand: OnDemandSettings | None = None  # None: the shard route only uses a coordinator `up` started
    default_num_predict: int | None = None  # --default-num-predict (None: the inventory's, else the default)


def choose_mode(option: str | None, settings: GatewaySettings) -> str:
    """--mode, else the inventory's sollol_gateway_mode, else hybrid when both groups have hosts, else
    whichever has hosts (shard when neither: the coordinator `sollol-ops up` runs on this machine)."""
    if option:
        return option
    if settings.mode:
        return settings.mode
    if settings.pool and settings.rpc_hosts:
        return "hybrid"
    return "pool" if settings.pool else "shard"


def build(opts: ServeOptions, settings: GatewaySettings, cluster: Callable[[], Cluster] | None = None) -> Gateway:
    mode = choose_mode(opts.mode, settings)
    if mode == "pool" and not settings.pool:
        raise GatewayError("--mode pool needs hosts in the inventory group ollama_nodes (docs/inventory.md)")
    config = GatewayConfig(mode=mode, pins=settings.pins, api_key=opts.api_key or None, max_body=opts.max_body)
    limit = opts.default_num_predict if opts.default_num_predict is not None else settings.default_num_predict
    config.default_num_predict = config.default_num_predict if limit is None else limit
    config.embeddings = settings.embeddings
    config.coordinator_ollama_url = settings.coordinator_ollama_url
    shard = None
    if opts.on_demand is not None and cluster is not None and mode in ("shard", "hybrid"):
        shard = OnDemand(opts.on_demand, cluster, opts.ollama_models)
    return Gateway(config, Pool(settings.pool, opts.pool), Catalog(opts.ollama_models), shard, cluster)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port") from exc
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s sollol-gateway %(levelname)s %(message)s"))
    logger = logging.getLogger("sollol_ops.gateway")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def serve(gw: Gateway, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(create_app(gw), log_config=None, access_log=False, lifespan="on", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    told = server.handle_exit

    def handle_exit(sig: int, frame: FrameType | None) -> None:  # uvicorn waits for open responses: end the pages'
        gw.stopping()
        told(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run(sockets=[sock])
