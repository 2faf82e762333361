"""The gateway's settings from the inventory: its pool (group `ollama_nodes`), mode, pins and switches."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster.inventory import (
    checked_int,
    cluster_wide_bool,
    cluster_wide_var,
    group_hosts,
    host_name_problem,
    host_vars,
    is_templated,
)
from sollol_ops.errors import InventoryError


@dataclass(frozen=True)
class PoolNode:
    """One member of the gateway's pool (group `ollama_nodes`): an Ollama or OpenAI-compatible server."""

    host: str
    address: str
    port: int
    api: str = "ollama"  # "ollama" or "openai"
    memory_mib: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclass
class GatewaySettings:
    pool: list[PoolNode]
    rpc_hosts: list[str]
    mode: str | None
    pins: dict[str, str]
    loading_progress: bool = False
    default_num_predict: int | None = None  # sollol_gateway_default_num_predict (None: unset)
    embeddings: bool = False  # sollol_embeddings
    coordinator_ollama_url: str = ""  # sollol_coordinator_ollama_url (gateway.models_admin)


def _pool_node(host: str, hv: Mapping[str, Any]) -> PoolNode:
    address = hv.get("ansible_host") or host
    var = "ansible_host" if hv.get("ansible_host") else "the inventory hostname"
    if not isinstance(address, str) or is_templated(address) or (problem := host_name_problem(address.strip())):
        why = "is not a host name or IPv4 address" if not isinstance(address, str) or is_templated(address) else problem
        raise InventoryError(f"host {host}: {var} {address!r} {why}")
    d = cluster_vars.POOL_DEFAULTS
    port = checked_int(
        host, "sollol_ollama_port", hv.get("sollol_ollama_port", d["sollol_ollama_port"]), low=1, high=65535
    )
    api = hv.get("sollol_ollama_api", d["sollol_ollama_api"])
    if api not in cluster_vars.POOL_APIS:
        raise InventoryError(
            f"host {host}: sollol_ollama_api must be one of {', '.join(cluster_vars.POOL_APIS)}, got {api!r}"
        )
    mem = checked_int(host, "sollol_ollama_memory_mib", hv.get("sollol_ollama_memory_mib", 0), low=0, high=1 << 40)
    return PoolNode(host, address.strip(), port, str(api), mem or None)


def gateway_settings_from_inventory_data(
    data: Mapping[str, Any],
    inventory: Path,
    pool_group: str = cluster_vars.POOL_GROUP,
    rpc_group: str = cluster_vars.RPC_GROUP,
) -> GatewaySettings:
    """The pool (group `ollama_nodes`, absent = empty) and the gateway's mode and pins."""
    hostvars = host_vars(data)
    pool: list[PoolNode] = []
    seen: dict[str, str] = {}
    for host in group_hosts(data, pool_group):
        node = _pool_node(host, hostvars.get(host, {}))
        key = f"{node.address}:{node.port}"
        if key in seen:
            raise InventoryError(f"duplicate pool node {key} (hosts {seen[key]} and {host}) in {inventory}")
        seen[key] = host
        pool.append(node)
    mode = cluster_wide_var(data, "sollol_gateway_mode")
    if mode is not None and mode not in cluster_vars.GATEWAY_MODES:
        raise InventoryError(
            f"sollol_gateway_mode must be one of {', '.join(cluster_vars.GATEWAY_MODES)}, got {mode!r}"
        )
    pins = cluster_wide_var(data, "sollol_gateway_pins") or {}
    if not isinstance(pins, Mapping) or not all(isinstance(k, str) and v in ("pool", "shard") for k, v in pins.items()):
        raise InventoryError(f"sollol_gateway_pins must map model names to 'pool' or 'shard', got {pins!r}")
    progress = cluster_wide_bool(data, "sollol_gateway_loading_progress")
    settings = GatewaySettings(pool, group_hosts(data, rpc_group), mode, dict(pins), progress)
    limit = cluster_wide_var(data, "sollol_gateway_default_num_predict")
    if limit is not None:
        settings.default_num_predict = checked_int(
            "all", "sollol_gateway_default_num_predict", limit, low=0, high=1 << 20
        )
    settings.embeddings = cluster_wide_bool(data, "sollol_embeddings")
    settings.coordinator_ollama_url = ollama_url(cluster_wide_var(data, "sollol_coordinator_ollama_url"))
    return settings


def ollama_url(value: Any, var: str = "sollol_coordinator_ollama_url") -> str:
    """An Ollama base URL (http://HOST:PORT, no path), without a trailing slash; "" when unset."""
    if value in (None, ""):
        return ""
    text = str(value).strip().rstrip("/")
    m = re.fullmatch(r"https?://([^/:\s]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?", text)
    if is_templated(value) or m is None or (m.group(2) and not 0 < int(m.group(2)[1:]) < 65536):
        raise InventoryError(f"{var} must be an URL like http://10.0.0.5:11434, got {value!r}")
    return text
