"""`sollol-ops inventory import`: an Ansible inventory from the original system's `~/.synapticllamas.json`.

What the file holds (SynapticLlamas `main.py`): `model_sharding_enabled` (older name
`distributed_inference_enabled`, default false) and `task_distribution_enabled` (default true) choose the
mode; `rpc_backends` is a list of `{host, port}`; `coordinator_url`, `model`, `synthesis_model` and a
number of UI settings are its own. Ollama nodes come from the file's `ollama_nodes` when present, else
from `OLLAMA_NODES` (comma-separated `host:port` or URLs, as its gateway reads them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster.inventory import host_name_problem
from sollol_ops.errors import InventoryError, UsageError
from sollol_ops.serve import statefile

MODE_KEYS = ("model_sharding_enabled", "distributed_inference_enabled", "task_distribution_enabled")
IMPORTED_KEYS = {*MODE_KEYS, "rpc_backends", "ollama_nodes"}
# The original system's own settings: known, nothing in sollol-ops corresponds to them.
NOT_APPLICABLE = {
    "coordinator_url": "sollol-ops runs its own coordinator (`sollol-ops up --port`)",
    "model": "models are chosen per request",
    "synthesis_model": "models are chosen per request",
    "mode": "replaced by the two mode flags",
}
OLLAMA_PORT = int(cluster_vars.POOL_DEFAULTS["sollol_ollama_port"])  # type: ignore[call-overload]
MAX_FILE = 1 << 20


@dataclass
class Imported:
    mode: str  # shard | pool | hybrid
    rpc: dict[str, list[int]] = field(default_factory=dict)  # address -> ports, in file order
    ollama: dict[str, int] = field(default_factory=dict)  # address -> port
    notes: list[str] = field(default_factory=list)  # one line each: what was ignored and why


def _flag(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise InventoryError(f"{key} must be true or false, not {json.dumps(value)[:40]}")
    return value


def _address(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: host must be a non-empty string")
    if problem := host_name_problem(value):
        raise InventoryError(f"{where}: host {value[:80]!r} {problem}")
    return value


def _port(value: Any, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InventoryError(f"{where}: port must be 1..65535, not {json.dumps(value)[:40]}")
    return value


def _node(text: str, where: str) -> tuple[str, int]:
    """`host`, `host:port` or `http://host:port` -> (host, port)."""
    parts = urlsplit(text if "//" in text else f"//{text}")
    try:
        port = parts.port or OLLAMA_PORT
    except ValueError as exc:
        raise InventoryError(f"{where}: {text[:80]!r} has a bad port") from exc
    return _address(parts.hostname or "", where), port


def parse(data: Any, env: Mapping[str, str]) -> Imported:
    if not isinstance(data, dict):
        raise InventoryError("the file must hold a JSON object (the SynapticLlamas settings)")
    sharding = _flag(data, "model_sharding_enabled", _flag(data, "distributed_inference_enabled", False))
    pool = _flag(data, "task_distribution_enabled", True)
    if not (sharding or pool):
        raise InventoryError("model_sharding_enabled and task_distribution_enabled are both false: no mode to import")
    out = Imported("hybrid" if sharding and pool else "shard" if sharding else "pool")
    if "distributed_inference_enabled" in data and "model_sharding_enabled" not in data:
        out.notes.append("distributed_inference_enabled read as model_sharding_enabled (its older name)")
    backends = data.get("rpc_backends", [])
    if not isinstance(backends, list):
        raise InventoryError("rpc_backends must be a list of {host, port}")
    for i, entry in enumerate(backends):
        where = f"rpc_backends[{i}]"
        if isinstance(entry, str):
            host, _, port_text = entry.rpartition(":")
            entry = {"host": host or port_text, "port": port_text if host else cluster_vars.DEFAULT_PORT}
        if not isinstance(entry, dict):
            raise InventoryError(f"{where} must be {{host, port}}")
        host = _address(entry.get("host"), where)
        port = _port(entry.get("port", cluster_vars.DEFAULT_PORT), where)
        ports = out.rpc.setdefault(host, [])
        if port in ports:
            out.notes.append(f"{where}: {host}:{port} listed twice, kept once")
        else:
            ports.append(port)
    nodes = data.get("ollama_nodes")
    source = "ollama_nodes"
    if nodes is None and env.get("OLLAMA_NODES"):
        nodes, source = [n.strip() for n in env["OLLAMA_NODES"].split(",") if n.strip()], "OLLAMA_NODES"
    if nodes is not None and not isinstance(nodes, list):
        raise InventoryError("ollama_nodes must be a list of host:port or URLs")
    for i, node in enumerate(nodes or []):
        where = f"{source}[{i}]"
        if isinstance(node, dict):
            node = node.get("url") or f"{node.get('host', '')}:{node.get('port', OLLAMA_PORT)}"
        if not isinstance(node, str):
            raise InventoryError(f"{where} must be host:port or a URL")
        host, port = _node(node, where)
        out.ollama.setdefault(host, port)
    if sharding and not out.rpc:
        out.notes.append("model sharding is on but rpc_backends is empty: add workers under [rpc_servers]")
    if pool and not out.ollama:
        out.notes.append("task distribution is on but no Ollama node is named (ollama_nodes or OLLAMA_NODES)")
    for key in data:
        if key in NOT_APPLICABLE:
            out.notes.append(f"{key} not imported: {NOT_APPLICABLE[key]}")
    unknown = sorted(k for k in data if k not in IMPORTED_KEYS and k not in NOT_APPLICABLE)
    if unknown:
        out.notes.append(f"unknown keys ignored: {', '.join(k[:40] for k in unknown[:20])}")
    return out


def _name(prefix: str, host: str) -> str:
    return f"{prefix}-{re.sub(r'[^A-Za-z0-9]+', '-', host).strip('-')}"


def render(imported: Imported, source: Path) -> str:
    lines = [
        f"# Imported by `sollol-ops inventory import` from {source.name} (SynapticLlamas settings).",
        "# Review it, then: sollol-ops provision (workers) and sollol-ops gateway / up.",
        "",
        f"[{cluster_vars.RPC_GROUP}]",
    ]
    for host, ports in imported.rpc.items():
        if len(ports) == 1:
            lines.append(f"{_name('rpc', host)} ansible_host={host} sollol_rpc_port={ports[0]}")
        else:
            instances = json.dumps([{"port": p} for p in ports])
            lines.append(f"{_name('rpc', host)} ansible_host={host} sollol_rpc_instances='{instances}'")
    lines += ["", f"[{cluster_vars.POOL_GROUP}]"]
    lines += [f"{_name('ollama', h)} ansible_host={h} sollol_ollama_port={p}" for h, p in imported.ollama.items()]
    lines += [
        "",
        f"[{cluster_vars.COORDINATOR_GROUP}]",
        "localhost ansible_connection=local",
        "",
        "[all:vars]",
        f"sollol_gateway_mode={imported.mode}",
        "",
    ]
    return "\n".join(lines)


def import_file(source: Path, output: Path | None, force: bool, env: Mapping[str, str] | None = None) -> Imported:
    """Read the original config, write the inventory (None: return it only). Nothing is written over an
    existing file without ``force``; the write is atomic."""
    try:
        raw = statefile.read_bounded(source, MAX_FILE)
    except FileNotFoundError:
        raise InventoryError(f"{source}: no such file") from None
    except ValueError as exc:
        raise InventoryError(f"{source}: {exc}") from exc
    except OSError as exc:
        raise InventoryError(f"{source}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InventoryError(f"{source} is not valid JSON: {' '.join(str(exc).split())[:120]}") from exc
    imported = parse(data, os.environ if env is None else env)
    if output is not None:
        if output.exists() and not force:
            raise UsageError(f"{output} exists; pass --force to overwrite it")
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(render(imported, source))
            os.replace(tmp, output)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InventoryError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return imported
