"""Ansible inventory -> cluster model (RPC backends and coordinators).

The inventory is read through `ansible-inventory --list`, the supported interface (ansible's Python
API is internal). Its JSON is cached, keyed by the inventory files' paths, sizes and mtimes (including
group_vars/ and host_vars/) and the ANSIBLE_* environment, so repeated read commands skip the
~0.5 s ansible start-up. Dynamic inventories (executable scripts, inventory plugin configs) are never cached.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops import cluster_vars
from sollol_ops.errors import InventoryError
from sollol_ops.paths import cache_dir

ENV_INVENTORY = "SOLLOL_INVENTORY"
_CACHE_VERSION = "1"


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


@dataclass(frozen=True)
class Coordinator:
    host: str
    address: str


@dataclass
class Cluster:
    inventory: Path
    backends: list[Backend]
    coordinators: list[Coordinator]
    groups: list[str] = field(default_factory=list)

    def rpc_list(self) -> str:
        return ",".join(b.endpoint for b in self.backends)


# --------------------------------------------------------------------------- locating the inventory


def _nearest_ansible_cfg(start: Path, env: Mapping[str, str]) -> Path | None:
    if env.get("ANSIBLE_CONFIG"):
        cfg = Path(env["ANSIBLE_CONFIG"])
        return cfg if cfg.is_file() else None
    for directory in (start, *start.parents):
        candidate = directory / "ansible.cfg"
        if candidate.is_file():
            return candidate
    return None


def _inventory_from_cfg(cfg: Path) -> Path | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(cfg)
    except configparser.Error as exc:
        raise InventoryError(f"cannot read {cfg}: {exc.message.splitlines()[0]}") from exc
    value = parser.get("defaults", "inventory", fallback="").strip()
    if not value:
        return None
    first = value.split(",")[0].strip()
    path = Path(os.path.expanduser(first))
    return path if path.is_absolute() else cfg.parent / path


def locate_inventory(option: str | None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """-i, then $SOLLOL_INVENTORY, then the nearest ansible.cfg's inventory, then ./inventory.ini."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    hint = "pass -i PATH, set SOLLOL_INVENTORY, or copy inventory.example.ini to inventory.ini"
    if option:
        path = Path(option).expanduser()
        if not path.exists():
            raise InventoryError(f"inventory '{option}' not found; {hint}")
        return path
    if env.get(ENV_INVENTORY):
        path = Path(env[ENV_INVENTORY]).expanduser()
        if not path.exists():
            raise InventoryError(f"inventory '{path}' (from ${ENV_INVENTORY}) not found; {hint}")
        return path
    cfg = _nearest_ansible_cfg(cwd, env)
    if cfg is not None:
        path = _inventory_from_cfg(cfg)
        if path is not None and path.exists():
            return path
    path = cwd / "inventory.ini"
    if path.exists():
        return path
    raise InventoryError(f"no inventory found; {hint}")


# --------------------------------------------------------------------------- ansible-inventory + cache


def _ansible_inventory_exe() -> str:
    local = Path(sys.executable).parent / "ansible-inventory"
    if local.is_file():
        return str(local)
    found = shutil.which("ansible-inventory")
    if not found:
        raise InventoryError("ansible-inventory not found; install ansible-core (pip install sollol-ops pulls it in)")
    return found


def _is_plugin_config(f: Path) -> bool:
    """An inventory plugin config (`plugin: amazon.aws.aws_ec2`, ...): its hosts come from elsewhere."""
    if f.suffix not in (".yml", ".yaml"):
        return False
    try:
        with f.open(encoding="utf-8", errors="replace") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    return re.search(r"^plugin:[ \t]*\S", head, re.MULTILINE) is not None


def _inventory_files(path: Path) -> list[Path] | None:
    """Every file that shapes the inventory, or None when it must not be cached (dynamic: an
    executable script or an inventory plugin config)."""
    files: list[Path] = []
    roots = [path] if path.is_dir() else [path.parent]
    if path.is_file():
        if os.access(path, os.X_OK) or _is_plugin_config(path):
            return None
        files.append(path)
    for root in roots:
        candidates = [root] if path.is_dir() else []
        candidates += [root / "group_vars", root / "host_vars"]
        vars_dirs = (root / "group_vars", root / "host_vars")
        for base in candidates:
            if not base.is_dir():
                continue
            for dirpath, _dirs, names in os.walk(base):
                for name in names:
                    f = Path(dirpath) / name
                    if f.is_file() and base == root:
                        source = not any(d in f.parents for d in vars_dirs)
                        if os.access(f, os.X_OK) or (source and _is_plugin_config(f)):
                            return None
                    files.append(f)
    return sorted(set(files))


def _cache_key(path: Path, files: list[Path], env: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    h.update(f"{_CACHE_VERSION}|{path.resolve()}|{sys.executable}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    for key in sorted(k for k in env if k.startswith("ANSIBLE_")):
        h.update(f"|{key}={env[key]}".encode())
    return h.hexdigest()[:32]


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        m = re.match(r"\[WARNING\]: Failed to parse inventory with '(\w+)' plugin: (.*)", ln)
        if m:
            return f"{m.group(2)} ({m.group(1)} plugin)"
    for ln in lines:
        if ln.startswith("[ERROR]:"):
            return ln.removeprefix("[ERROR]:").strip()
    return lines[-1] if lines else "ansible-inventory failed"


def ansible_inventory_list(path: Path, env: Mapping[str, str] | None = None, use_cache: bool = True) -> dict[str, Any]:
    env = dict(os.environ if env is None else env)
    files = _inventory_files(path) if use_cache else None
    cache_file = None
    if files is not None:
        cache_file = cache_dir() / "inventory" / f"{_cache_key(path, files, env)}.json"
        try:
            return json.loads(cache_file.read_text())
        except (OSError, ValueError):
            pass
    run_env = {
        **env,
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
    }
    try:
        proc = subprocess.run(
            [_ansible_inventory_exe(), "-i", str(path), "--list"],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InventoryError(f"ansible-inventory timed out reading {path}") from exc
    if proc.returncode != 0:
        raise InventoryError(f"cannot parse inventory {path}: {_first_error(proc.stderr)}")
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise InventoryError(f"ansible-inventory printed no JSON for {path}") from exc
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(cache_file)
        except OSError:
            pass
    return data


# --------------------------------------------------------------------------- groups -> cluster


def group_hosts(data: Mapping[str, Any], group: str) -> list[str]:
    """Hosts of a group and its children, in inventory order, each once."""
    seen: list[str] = []
    stack_guard: set[str] = set()

    def walk(name: str) -> None:
        if name in stack_guard:
            return
        stack_guard.add(name)
        entry = data.get(name) or {}
        for host in entry.get("hosts", []):
            if host not in seen:
                seen.append(host)
        for child in entry.get("children", []):
            walk(child)

    walk(group)
    return seen


def _groups(data: Mapping[str, Any]) -> list[str]:
    # `ansible-inventory --list` gives an empty group no entry of its own; it only appears among its
    # parent's children, so collect those too (else an empty [rpc_servers] reads as "no such group").
    names = {k for k in data if k != "_meta"}
    for entry in data.values():
        if isinstance(entry, Mapping):
            names.update(c for c in entry.get("children", []) if isinstance(c, str))
    return sorted(names)


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _int(host: str, var: str, value: Any, *, low: int, high: int) -> int:
    if _templated(value):
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


def _address(host: str, hv: Mapping[str, Any]) -> str:
    address = hv.get("sollol_rpc_address") or hv.get("ansible_host") or host
    if _templated(address) or not isinstance(address, str) or not address.strip() or ":" in address:
        raise InventoryError(f"host {host}: sollol_rpc_address/ansible_host {address!r} is not a usable address")
    if address.strip() == "0.0.0.0":
        # A wildcard is nothing the coordinator can dial (it would reach itself), nor a safe bind address.
        raise InventoryError(
            f"host {host}: sollol_rpc_address/ansible_host is 0.0.0.0; set the address the coordinator reaches it on"
        )
    return address.strip()


def _host_backends(host: str, hv: Mapping[str, Any]) -> list[Backend]:
    address = _address(host, hv)
    backend = str(hv.get("llama_cpp_backend", cluster_vars.DEFAULTS["llama_cpp_backend"]))
    host_mem = _int(host, "sollol_rpc_memory_mib", hv.get("sollol_rpc_memory_mib", 0), low=0, high=1 << 40)
    host_weight = _float(host, "sollol_rpc_weight", hv.get("sollol_rpc_weight", 0))
    instances = hv.get("sollol_rpc_instances") or []
    if not isinstance(instances, list):
        raise InventoryError(f"host {host}: sollol_rpc_instances must be a list of {{port, device}} entries")
    if not instances:
        port = _int(host, "sollol_rpc_port", hv.get("sollol_rpc_port", cluster_vars.DEFAULT_PORT), low=1, high=65535)
        return [Backend(host, address, port, None, backend, host_mem or None, host_weight or None)]
    result = []
    for i, inst in enumerate(instances):
        var = f"sollol_rpc_instances[{i}]"
        if not isinstance(inst, Mapping) or "port" not in inst:
            raise InventoryError(f"host {host}: {var} must be a mapping with at least 'port'")
        unknown = set(inst) - {"port", "device", "memory_mib", "weight", "threads"}
        if unknown:
            raise InventoryError(f"host {host}: {var} has unknown keys {sorted(unknown)}")
        port = _int(host, f"{var}.port", inst["port"], low=1, high=65535)
        device = inst.get("device")
        if device is not None and (not isinstance(device, str) or not re.fullmatch(r"[A-Za-z0-9_,:.-]+", device)):
            raise InventoryError(f"host {host}: {var}.device must be a device name like CUDA0, got {device!r}")
        mem = _int(host, f"{var}.memory_mib", inst.get("memory_mib", 0), low=0, high=1 << 40)
        weight = _float(host, f"{var}.weight", inst.get("weight", 0))
        threads = _int(host, f"{var}.threads", inst.get("threads", 0), low=0, high=4096)
        result.append(Backend(host, address, port, device, backend, mem or None, weight or None, threads or None))
    return result


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
    hostvars: Mapping[str, Any] = data.get("_meta", {}).get("hostvars", {})
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
    coordinators = [Coordinator(h, _address(h, hostvars.get(h, {}))) for h in group_hosts(data, coordinator_group)]
    return Cluster(inventory=inventory, backends=backends, coordinators=coordinators, groups=groups)


def load_cluster(
    inventory: Path,
    rpc_group: str = cluster_vars.RPC_GROUP,
    coordinator_group: str = cluster_vars.COORDINATOR_GROUP,
    env: Mapping[str, str] | None = None,
) -> Cluster:
    data = ansible_inventory_list(inventory, env)
    return cluster_from_inventory_data(data, inventory, rpc_group, coordinator_group)
