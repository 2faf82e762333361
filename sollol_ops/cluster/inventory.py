"""Ansible inventory data -> cluster model: RPC backends, coordinators, cluster-wide variables.

The data is `ansible-inventory --list`'s JSON (`sollol_ops.cluster.ansible_inventory` reads and caches it).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster.ansible_inventory import ansible_inventory_list
from sollol_ops.errors import InventoryError, UsageError
from sollol_ops.model.names import parse_model_ref


@dataclass(frozen=True)
class Backend:
    """One rpc-server instance: a host may run several (one per device)."""

    host: str
    address: str
    port: int
    device: str | None = None
    backend: str = "cpu"
    memory_mib: int | None = None
    weight: float | None = None
    threads: int | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def is_cpu(self) -> bool:
        return self.backend == "cpu"


# The coordinator's host memory as a placement device (llama.cpp's CPU backend; layers through -ngl).
HOST_DEVICE = str(cluster_vars.COORDINATOR_VARS["sollol_coordinator_device"])


@dataclass(frozen=True)
class Coordinator:
    """A host of the coordinator group; memory_mib > 0: it offers that much of `device` to the model's layers."""

    host: str
    address: str
    memory_mib: int = 0
    device: str = HOST_DEVICE
    local: bool = False  # ansible_connection=local: the inventory says this is the machine reading it


class Placement(StrEnum):
    """sollol_placement: how the layers are split (docs/placement.md)."""

    SPEED = "speed"  # by measured speed once every worker is measured, by memory before
    MEMORY = "memory"  # by usable memory, as llama.cpp does


@dataclass
class Cluster:
    inventory: Path
    backends: list[Backend]
    coordinators: list[Coordinator]
    groups: list[str] = field(default_factory=list)
    skip_unhealthy: bool = False  # sollol_skip_unhealthy: start degraded on the healthy backends when some are down
    draft_models: dict[str, str] = field(default_factory=dict)  # sollol_draft_models: target -> draft or `ngram`
    placement: Placement = Placement.SPEED  # sollol_placement
    embeddings: bool = False  # sollol_embeddings: the coordinator's llama-server runs with --embeddings
    heal: str = str(cluster_vars.CLUSTER_WIDE["sollol_heal"])  # sollol_heal: auto | manual
    stall_timeout: float = float(cluster_vars.CLUSTER_WIDE["sollol_stall_timeout"])  # type: ignore[arg-type]

    def rpc_list(self) -> str:
        return ",".join(b.endpoint for b in self.backends)

    def offering_coordinator(self, is_this_host: Callable[[str], bool]) -> Coordinator | None:
        """The coordinator whose memory `up` on this machine may use: of the coordinator hosts that offer
        memory, the one that is this machine (ansible_connection=local, or an address of this host), or
        the group's only host (`up` runs on the coordinator). None when none offers memory."""
        offering = [c for c in self.coordinators if c.memory_mib > 0]
        if not offering:
            return None
        here = [c for c in offering if c.local or is_this_host(c.address)]
        if len(here) == 1:
            return here[0]
        if not here and len(self.coordinators) == 1:
            return offering[0]
        names = ", ".join(c.host for c in (here or offering))
        raise InventoryError(
            f"coordinator hosts {names} offer memory (sollol_coordinator_memory_mib) and sollol-ops cannot tell which "
            "one is this machine; set it on this machine's host only, or pass `up --coordinator-memory MIB`"
        )


# --------------------------------------------------------------------------- groups -> cluster


def host_vars(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Each host's variables (`_meta.hostvars` of `ansible-inventory --list`)."""
    return data.get("_meta", {}).get("hostvars", {})


def group_hosts(data: Mapping[str, Any], group: str) -> list[str]:
    """Hosts of a group and its children, in inventory order, each once.

    Linear in the hosts: `seen` is a dict (insertion-ordered), not a list searched per host, which made a
    read of 95k hosts quadratic (a minute of the cached read)."""
    seen: dict[str, None] = {}
    stack_guard: set[str] = set()

    def walk(name: str) -> None:
        if name in stack_guard:
            return
        stack_guard.add(name)
        entry = data.get(name) or {}
        seen.update(dict.fromkeys(entry.get("hosts", [])))
        for child in entry.get("children", []):
            walk(child)

    walk(group)
    return list(seen)


def _groups(data: Mapping[str, Any]) -> list[str]:
    # `ansible-inventory --list` gives an empty group no entry of its own; it only appears among its
    # parent's children, so collect those too (else an empty [rpc_servers] reads as "no such group").
    names = {k for k in data if k != "_meta"}
    for entry in data.values():
        if isinstance(entry, Mapping):
            names.update(c for c in entry.get("children", []) if isinstance(c, str))
    return sorted(names)


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def checked_int(host: str, var: str, value: Any, *, low: int, high: int) -> int:
    if is_templated(value):
        raise InventoryError(f"host {host}: {var}={value!r} is a template; sollol-ops needs a literal value")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InventoryError(f"host {host}: {var} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError as exc:
        raise InventoryError(f"host {host}: {var} must be an integer, got {value!r}") from exc
    if not low <= number <= high:
        raise InventoryError(f"host {host}: {var}={number} is out of range {low}..{high}")
    return number


def _float(host: str, var: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InventoryError(f"host {host}: {var} must be a number, got {value!r}") from exc
    if not math.isfinite(number) or number < 0:
        raise InventoryError(f"host {host}: {var} must be a finite number >= 0, got {value!r}")
    return number


_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")
MAX_LABEL = 63
MAX_HOST_NAME = 253


def host_name_problem(address: str) -> str | None:
    """Why `address` is neither an IPv4 literal nor a DNS host name (RFC 1123 sizes), or None."""
    if not address.isascii():
        return "is not ASCII; write an internationalised name in its xn-- (punycode) form"
    name = address.removesuffix(".")
    if re.fullmatch(r"[0-9.]+", name):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return "is not a valid IPv4 address"
        return None
    if len(name) > MAX_HOST_NAME:
        return f"is {len(name)} characters (the limit is {MAX_HOST_NAME})"
    for label in name.split("."):
        if not label:
            return "has an empty label (two dots in a row, or a leading dot)"
        if len(label) > MAX_LABEL:
            return f"has a label of {len(label)} characters (the limit is {MAX_LABEL})"
        if not _LABEL.fullmatch(label):
            return f"has a label {label!r} that is not letters, digits, '-' and '_' (no leading or trailing '-')"
    return None


def _address(host: str, hv: Mapping[str, Any]) -> str:
    var = next((v for v in ("sollol_rpc_address", "ansible_host") if hv.get(v)), "the inventory hostname")
    address = hv.get(var, host)
    if is_templated(address) or not isinstance(address, str) or not address.strip() or ":" in address:
        raise InventoryError(f"host {host}: sollol_rpc_address/ansible_host {address!r} is not a usable address")
    address = address.strip()
    if address == "0.0.0.0":
        # A wildcard is nothing the coordinator can dial (it would reach itself), nor a safe bind address.
        raise InventoryError(
            f"host {host}: sollol_rpc_address/ansible_host is 0.0.0.0; set the address the coordinator reaches it on"
        )
    problem = host_name_problem(address)
    if problem is not None:
        raise InventoryError(
            f"host {host}: {var} {address!r} {problem}; set sollol_rpc_address to a host name or IPv4 address"
        )
    return address


def _host_backends(host: str, hv: Mapping[str, Any]) -> list[Backend]:
    address = _address(host, hv)
    backend = str(hv.get("llama_cpp_backend", cluster_vars.DEFAULTS["llama_cpp_backend"]))
    host_mem = checked_int(host, "sollol_rpc_memory_mib", hv.get("sollol_rpc_memory_mib", 0), low=0, high=1 << 40)
    host_weight = _float(host, "sollol_rpc_weight", hv.get("sollol_rpc_weight", 0))
    instances = hv.get("sollol_rpc_instances") or []
    if not isinstance(instances, list):
        raise InventoryError(f"host {host}: sollol_rpc_instances must be a list of {{port, device}} entries")
    if not instances:
        port = checked_int(
            host, "sollol_rpc_port", hv.get("sollol_rpc_port", cluster_vars.DEFAULT_PORT), low=1, high=65535
        )
        return [Backend(host, address, port, None, backend, host_mem or None, host_weight or None)]
    result = []
    for i, inst in enumerate(instances):
        var = f"sollol_rpc_instances[{i}]"
        if not isinstance(inst, Mapping) or "port" not in inst:
            raise InventoryError(f"host {host}: {var} must be a mapping with at least 'port'")
        unknown = set(inst) - {"port", "device", "memory_mib", "weight", "threads"}
        if unknown:
            raise InventoryError(f"host {host}: {var} has unknown keys {sorted(unknown)}")
        port = checked_int(host, f"{var}.port", inst["port"], low=1, high=65535)
        device = inst.get("device")
        if device is not None and (not isinstance(device, str) or not re.fullmatch(r"[A-Za-z0-9_,:.-]+", device)):
            raise InventoryError(f"host {host}: {var}.device must be a device name like CUDA0, got {device!r}")
        mem = checked_int(host, f"{var}.memory_mib", inst.get("memory_mib", 0), low=0, high=1 << 40)
        weight = _float(host, f"{var}.weight", inst.get("weight", 0))
        threads = checked_int(host, f"{var}.threads", inst.get("threads", 0), low=0, high=4096)
        result.append(Backend(host, address, port, device, backend, mem or None, weight or None, threads or None))
    return result


_DEVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def device_name_problem(name: object) -> str | None:
    """Why `name` is not a llama.cpp device name (CPU, CUDA0, Vulkan1, ...), or None."""
    if not isinstance(name, str) or is_templated(name) or not _DEVICE_NAME.fullmatch(name) or len(name) > 64:
        return f"must be a device name like {HOST_DEVICE} or CUDA0, got {name!r}"
    return None


def _coordinator(host: str, hv: Mapping[str, Any]) -> Coordinator:
    var = "sollol_coordinator_memory_mib"
    memory = checked_int(host, var, hv.get(var, 0), low=0, high=1 << 40)
    device = hv.get("sollol_coordinator_device", HOST_DEVICE)
    if (problem := device_name_problem(device)) is not None:
        raise InventoryError(f"host {host}: sollol_coordinator_device {problem}")
    local = hv.get("ansible_connection") == "local"
    return Coordinator(host, _address(host, hv), memory, str(device), local)


def cluster_from_inventory_data(
    data: Mapping[str, Any],
    inventory: Path,
    rpc_group: str = cluster_vars.RPC_GROUP,
    coordinator_group: str = cluster_vars.COORDINATOR_GROUP,
) -> Cluster:
    groups = _groups(data)
    if rpc_group not in groups:
        raise InventoryError(
            f"inventory {inventory} has no group '{rpc_group}' (groups: {', '.join(groups) or 'none'}); "
            f"list your workers under [{rpc_group}] or pass --rpc-group"
        )
    hostvars = host_vars(data)
    hosts = group_hosts(data, rpc_group)
    if not hosts:
        raise InventoryError(f"group '{rpc_group}' in {inventory} has no hosts")
    backends: list[Backend] = []
    seen: dict[str, str] = {}
    for host in hosts:
        for b in _host_backends(host, hostvars.get(host, {})):
            if b.endpoint in seen and seen[b.endpoint] == host:
                raise InventoryError(
                    f"host {host} has two rpc-server instances on {b.endpoint}; give each instance its own port"
                )
            if b.endpoint in seen:
                raise InventoryError(
                    f"duplicate rpc endpoint {b.endpoint} (hosts {seen[b.endpoint]} and {host}); "
                    "give each instance its own port"
                )
            seen[b.endpoint] = host
            backends.append(b)
    coordinators = [_coordinator(h, hostvars.get(h, {})) for h in group_hosts(data, coordinator_group)]
    skip = cluster_wide_bool(data, "sollol_skip_unhealthy")
    heal, stall_timeout = heal_settings(data)
    return Cluster(
        inventory=inventory,
        backends=backends,
        coordinators=coordinators,
        groups=groups,
        skip_unhealthy=skip,
        heal=heal,
        stall_timeout=stall_timeout,
        draft_models=draft_models(cluster_wide_var(data, "sollol_draft_models")),
        placement=placement_var(data),
        embeddings=cluster_wide_bool(data, "sollol_embeddings"),
    )


def placement_var(data: Mapping[str, Any]) -> Placement:
    """sollol_placement (cluster-wide; absent: cluster_vars' default)."""
    value = cluster_wide_var(data, "sollol_placement")
    value = cluster_vars.CLUSTER_WIDE["sollol_placement"] if value is None else value
    if not isinstance(value, str) or value.strip().lower() not in cluster_vars.PLACEMENTS:
        raise InventoryError(f"sollol_placement must be one of {', '.join(cluster_vars.PLACEMENTS)}, got {value!r}")
    return Placement(value.strip().lower())


def load_cluster(
    inventory: Path,
    rpc_group: str = cluster_vars.RPC_GROUP,
    coordinator_group: str = cluster_vars.COORDINATOR_GROUP,
    env: Mapping[str, str] | None = None,
) -> Cluster:
    data = ansible_inventory_list(inventory, env)
    return cluster_from_inventory_data(data, inventory, rpc_group, coordinator_group)


def cluster_wide_var(data: Mapping[str, Any], name: str) -> Any:
    """A cluster-wide variable: the value every host that has it agrees on (None when none has it)."""
    hostvars = host_vars(data)
    found: dict[str, Any] = {}
    for host, hv in hostvars.items():
        if isinstance(hv, Mapping) and name in hv:
            found[host] = hv[name]
    values = list(found.values())
    if any(v != values[0] for v in values[1:]):
        a, b = next((h1, h2) for h1 in found for h2 in found if found[h1] != found[h2])
        raise InventoryError(f"{name} differs between hosts {a} and {b}; set it once, in [all:vars] or group_vars/all")
    return values[0] if values else None


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "")


def cluster_wide_bool(data: Mapping[str, Any], name: str) -> bool:
    """A cluster-wide switch (absent: cluster_vars' default). Ansible's booleans: true/false, yes/no, on/off,
    1/0 (an INI [all:vars] value arrives as a string)."""
    value = cluster_wide_var(data, name)
    if value is None:
        return bool({**cluster_vars.CLUSTER_WIDE, **cluster_vars.GATEWAY_DEFAULTS}[name])
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InventoryError(f"{name} must be true or false, got {value!r}")


# `up --draft` / sollol_draft_models: a draft model's name, or one of these (a model called so: name:latest).
DRAFT_NGRAM = "ngram"  # llama.cpp's draftless n-gram speculation
DRAFT_NONE = "none"
MAX_DRAFT_ENTRIES = 4096


def _model_name(value: Any, what: str) -> str:
    """`value` as the canonical model name (smollm2 -> smollm2:latest), or an InventoryError naming `what`."""
    if not isinstance(value, str) or is_templated(value):
        raise InventoryError(f"sollol_draft_models: {what} must be a model name, got {value!r:.80}")
    try:
        return str(parse_model_ref(value))
    except UsageError as exc:
        raise InventoryError(f"sollol_draft_models: {what}: {exc}") from exc


def draft_models(value: Any) -> dict[str, str]:
    """sollol_draft_models checked: canonical target name -> canonical draft name, `ngram` or `none`. A JSON
    object in a string (an INI [all:vars] line) is read as one."""
    if value is None:
        return {}
    if isinstance(value, str) and value.strip().startswith("{") and not is_templated(value):
        import json  # only for this INI spelling

        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InventoryError(f"sollol_draft_models is not a valid JSON object: {exc}") from exc
    if not isinstance(value, Mapping):
        raise InventoryError(
            f"sollol_draft_models must map model names to a draft model or 'ngram' "
            f'(e.g. {{"codellama:13b": "codellama:7b"}}), got {value!r:.80}'
        )
    if len(value) > MAX_DRAFT_ENTRIES:
        raise InventoryError(f"sollol_draft_models has {len(value)} entries (the limit is {MAX_DRAFT_ENTRIES})")
    out: dict[str, str] = {}
    for key, draft in value.items():
        target = _model_name(key, "a target")
        keyword = isinstance(draft, str) and draft in (DRAFT_NGRAM, DRAFT_NONE)
        choice = str(draft) if keyword else _model_name(draft, f"the draft of {target}")
        if target in out and out[target] != choice:
            raise InventoryError(f"sollol_draft_models names {target} twice, with drafts {out[target]} and {choice}")
        out[target] = choice
    return out


def heal_settings(data: Mapping[str, Any]) -> tuple[str, float]:
    """sollol_heal (auto | manual) and sollol_stall_timeout (seconds > 0), cluster-wide."""
    heal = cluster_wide_var(data, "sollol_heal")
    heal = cluster_vars.CLUSTER_WIDE["sollol_heal"] if heal is None else heal
    if heal not in cluster_vars.HEAL_MODES:
        raise InventoryError(f"sollol_heal must be one of {', '.join(cluster_vars.HEAL_MODES)}, got {heal!r}")
    value = cluster_wide_var(data, "sollol_stall_timeout")
    value = cluster_vars.CLUSTER_WIDE["sollol_stall_timeout"] if value is None else value
    try:
        seconds = float(value) if not isinstance(value, bool) and not is_templated(value) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= 86400:
        raise InventoryError(f"sollol_stall_timeout must be a number of seconds in (0, 86400], got {value!r}")
    return str(heal), seconds
