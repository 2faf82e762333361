"""Ansible inventory -> cluster model (RPC backends and coordinators).

The inventory is read through `ansible-inventory --list`, the supported interface (ansible's Python
API is internal). Its JSON is cached, keyed by the inventory files' paths, sizes and mtimes (including
group_vars/ and host_vars/) and the ANSIBLE_* environment, so repeated read commands skip the
~0.5 s ansible start-up. Dynamic inventories (executable scripts, inventory plugin configs) are never cached.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.errors import InventoryError
from sollol_ops.paths import cache_dir

ENV_INVENTORY = "SOLLOL_INVENTORY"
_CACHE_VERSION = "1"

# ansible-inventory runs with bounds: hostile input (a YAML alias bomb that slips past the check below,
# a host range of millions) ends in an InventoryError instead of eating the machine.
ANSIBLE_INVENTORY_MEMORY = 1 << 30  # RLIMIT_AS; a plain run needs about 60 MiB resident
ANSIBLE_INVENTORY_OUTPUT = 64 << 20  # RLIMIT_FSIZE on its JSON (stdout goes to a file): what we read at most
ANSIBLE_INVENTORY_TIMEOUT = 120  # seconds; dynamic inventories may ask a cloud API
# YAML aliases may expand an inventory by at most this many nodes (a "billion laughs" file expands to
# 9**9 strings from a few hundred bytes: refused before Ansible sees it).
MAX_ALIAS_EXPANSION = 100_000
YAML_SUFFIXES = ("", ".yml", ".yaml", ".json")


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


@dataclass
class Cluster:
    inventory: Path
    backends: list[Backend]
    coordinators: list[Coordinator]
    groups: list[str] = field(default_factory=list)
    skip_unhealthy: bool = False  # sollol_skip_unhealthy: start degraded on the healthy backends when some are down

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
    import configparser  # only without -i / $SOLLOL_INVENTORY

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


# --------------------------------------------------------------------------- YAML alias bombs


def _yaml_candidates(path: Path) -> Iterator[Path]:
    """Every file Ansible may read as YAML for this inventory: the source(s) and group_vars/host_vars."""
    if path.is_file():
        yield path
        base = path.parent
    else:
        base = path
        for dirpath, dirnames, names in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if Path(dirpath) != path or d not in ("group_vars", "host_vars"))
            yield from (Path(dirpath) / name for name in sorted(names))
    for vars_dir in (base / "group_vars", base / "host_vars"):
        for dirpath, dirnames, names in os.walk(vars_dir):
            dirnames.sort()
            yield from (Path(dirpath) / name for name in sorted(names))


def _alias_expansion(events: Iterator[Any], limit: int) -> int:
    """How many nodes the aliases of a YAML event stream add once expanded; stops once past `limit`.

    Streams parser events (no objects are built): each anchored node's expanded size is recorded when
    it ends, and each alias adds that size less the one node it is. ValueError on a recursive alias.
    """
    added = 0
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node (capped: past the limit we stop)
    open_anchors: set[str] = set()
    import yaml  # only when an inventory is read by ansible-inventory: a cached one needs no YAML

    stack: list[list[Any]] = [[0, None]]  # per open collection: [expanded size so far, its anchor]
    for event in events:
        if isinstance(event, yaml.DocumentStartEvent):
            sizes.clear()  # anchors are per document
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise ValueError(f"alias *{event.anchor} refers to the node it is in")
            size = sizes.get(event.anchor, 1)  # an undefined alias is Ansible's to report
            stack[-1][0] += size
            added += size - 1
            if added > limit:
                return added
        elif isinstance(event, yaml.ScalarEvent):
            stack[-1][0] += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            if event.anchor:
                open_anchors.add(event.anchor)
            stack.append([1, event.anchor])
        elif isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
            size = min(size, limit + 2)
            if anchor:
                open_anchors.discard(anchor)
                sizes[anchor] = size
            stack[-1][0] += size
    return added


def _read_yaml(path: Path) -> bytes | None:
    """The bytes of a regular file named like YAML, opened without blocking (a FIFO would wait); else None."""
    if path.suffix.lower() not in YAML_SUFFIXES:
        return None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
    except OSError:
        return None  # Ansible reports what it cannot read


def check_yaml_aliases(path: Path, limit: int = MAX_ALIAS_EXPANSION) -> None:
    """Refuse an inventory whose YAML aliases expand it by more than `limit` nodes, or recursively.

    Only parser events are looked at (nothing is built); a file that does not parse is left to
    Ansible, which names the error. Files without both '&' and '*' cannot alias and are not parsed.
    """
    import yaml  # see _alias_expansion

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: fast, and caps nesting depth
    for f in _yaml_candidates(path):
        data = _read_yaml(f)
        if data is None or b"&" not in data or b"*" not in data:
            continue
        try:
            added = _alias_expansion(yaml.parse(data, Loader=loader), limit)
        except ValueError as exc:
            raise InventoryError(f"inventory file {f}: {exc}; YAML aliases must not refer to themselves") from exc
        except (yaml.YAMLError, UnicodeError, RecursionError):
            continue
        if added > limit:
            raise InventoryError(
                f"inventory file {f}: YAML aliases expand it by more than {limit:,} nodes "
                "(an alias bomb?); write the values out or use fewer aliases"
            )


# --------------------------------------------------------------------------- running ansible-inventory


_OUT_OF_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|failed to map segment")


def _child_limits(memory: int, output: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))

    return apply


# --------------------------------------------------------------------------- the cache: private files
#
# A cache entry is the whole `ansible-inventory --list` output, every variable included
# (ansible_become_password, ansible_ssh_pass, ...): it is created 0600 in a 0700 directory, and an
# entry or directory an older version left readable is tightened when next used.

CACHE_DIR_MODE = 0o700
CACHE_FILE_MODE = 0o600
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _private_dir(directory: Path) -> None:
    """Create `directory` 0700 (its parents as usual), or make an existing one so, with its files 0600."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(directory, CACHE_DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{directory} is not a directory")
    if stat.S_IMODE(st.st_mode) != CACHE_DIR_MODE:
        os.chmod(directory, CACHE_DIR_MODE)
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, CACHE_FILE_MODE, follow_symlinks=False)


def _read_private(path: Path) -> str:
    _private_dir(path.parent)
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        if stat.S_IMODE(os.fstat(fd).st_mode) != CACHE_FILE_MODE:
            os.fchmod(fd, CACHE_FILE_MODE)
        return fh.read().decode("utf-8")


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically through a temporary file that is 0600 from its creation."""
    _private_dir(path.parent)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, CACHE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def _run_ansible_inventory(path: Path, run_env: Mapping[str, str]) -> bytes:
    """`ansible-inventory --list` under a memory limit, an output limit and a timeout; its stdout."""
    exe = _ansible_inventory_exe()
    import tempfile  # only when the cache misses

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(
                [exe, "-i", str(path), "--list"],
                stdout=out,
                stderr=err,
                env=dict(run_env),
                timeout=ANSIBLE_INVENTORY_TIMEOUT,
                check=False,
                preexec_fn=_child_limits(ANSIBLE_INVENTORY_MEMORY, ANSIBLE_INVENTORY_OUTPUT),
            )
        except subprocess.TimeoutExpired as exc:
            raise InventoryError(
                f"ansible-inventory timed out after {ANSIBLE_INVENTORY_TIMEOUT} s reading {path}"
            ) from exc
        err.seek(0)
        stderr = err.read(ANSIBLE_INVENTORY_OUTPUT).decode("utf-8", "replace")
        out.seek(0)
        stdout = out.read(ANSIBLE_INVENTORY_OUTPUT)
    # RLIMIT_FSIZE stops the file at the cap: Python ignores SIGXFSZ and its write fails, so a full file
    # (or the signal, for a child that does not ignore it) means the output was cut.
    if proc.returncode == -signal.SIGXFSZ or len(stdout) >= ANSIBLE_INVENTORY_OUTPUT:
        raise InventoryError(
            f"ansible-inventory printed more than {_size(ANSIBLE_INVENTORY_OUTPUT)} for {path}; "
            "is a host range or a variable far larger than meant?"
        )
    if proc.returncode != 0 and _OUT_OF_MEMORY.search(stderr):
        raise InventoryError(
            f"ansible-inventory ran out of its {_size(ANSIBLE_INVENTORY_MEMORY)} of memory reading {path}; "
            "is a host range or a variable far larger than meant?"
        )
    if proc.returncode < 0:
        raise InventoryError(
            f"ansible-inventory was killed by {signal.Signals(-proc.returncode).name} reading {path} "
            f"(it may use {_size(ANSIBLE_INVENTORY_MEMORY)} of memory)"
        )
    if proc.returncode != 0:
        raise InventoryError(f"cannot parse inventory {path}: {_first_error(stderr)}")
    return stdout


def _size(n_bytes: int) -> str:
    return f"{n_bytes >> 20} MiB" if n_bytes >= 1 << 20 and not n_bytes % (1 << 20) else f"{n_bytes:,} bytes"


def ansible_inventory_list(path: Path, env: Mapping[str, str] | None = None, use_cache: bool = True) -> dict[str, Any]:
    env = dict(os.environ if env is None else env)
    files = _inventory_files(path) if use_cache else None
    cache_file = None
    if files is not None:
        cache_file = cache_dir() / "inventory" / f"{_cache_key(path, files, env)}.json"
        try:
            return json.loads(_read_private(cache_file))
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
    check_yaml_aliases(path)
    stdout = _run_ansible_inventory(path, run_env)
    try:
        data = json.loads(stdout)
    except ValueError as exc:
        raise InventoryError(f"ansible-inventory printed no JSON for {path}") from exc
    if cache_file is not None:
        try:
            _write_private(cache_file, json.dumps(data).encode())
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
    if _templated(address) or not isinstance(address, str) or not address.strip() or ":" in address:
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


_DEVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def device_name_problem(name: object) -> str | None:
    """Why `name` is not a llama.cpp device name (CPU, CUDA0, Vulkan1, ...), or None."""
    if not isinstance(name, str) or _templated(name) or not _DEVICE_NAME.fullmatch(name) or len(name) > 64:
        return f"must be a device name like {HOST_DEVICE} or CUDA0, got {name!r}"
    return None


def _coordinator(host: str, hv: Mapping[str, Any]) -> Coordinator:
    var = "sollol_coordinator_memory_mib"
    memory = _int(host, var, hv.get(var, 0), low=0, high=1 << 40)
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
    coordinators = [_coordinator(h, hostvars.get(h, {})) for h in group_hosts(data, coordinator_group)]
    skip = cluster_wide_bool(data, "sollol_skip_unhealthy")
    return Cluster(
        inventory=inventory, backends=backends, coordinators=coordinators, groups=groups, skip_unhealthy=skip
    )


def load_cluster(
    inventory: Path,
    rpc_group: str = cluster_vars.RPC_GROUP,
    coordinator_group: str = cluster_vars.COORDINATOR_GROUP,
    env: Mapping[str, str] | None = None,
) -> Cluster:
    data = ansible_inventory_list(inventory, env)
    return cluster_from_inventory_data(data, inventory, rpc_group, coordinator_group)


# --------------------------------------------------------------------------- the gateway's pool


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


def _pool_node(host: str, hv: Mapping[str, Any]) -> PoolNode:
    address = hv.get("ansible_host") or host
    var = "ansible_host" if hv.get("ansible_host") else "the inventory hostname"
    if not isinstance(address, str) or _templated(address) or (problem := host_name_problem(address.strip())):
        why = "is not a host name or IPv4 address" if not isinstance(address, str) or _templated(address) else problem
        raise InventoryError(f"host {host}: {var} {address!r} {why}")
    d = cluster_vars.POOL_DEFAULTS
    port = _int(host, "sollol_ollama_port", hv.get("sollol_ollama_port", d["sollol_ollama_port"]), low=1, high=65535)
    api = hv.get("sollol_ollama_api", d["sollol_ollama_api"])
    if api not in cluster_vars.POOL_APIS:
        raise InventoryError(
            f"host {host}: sollol_ollama_api must be one of {', '.join(cluster_vars.POOL_APIS)}, got {api!r}"
        )
    mem = _int(host, "sollol_ollama_memory_mib", hv.get("sollol_ollama_memory_mib", 0), low=0, high=1 << 40)
    return PoolNode(host, address.strip(), port, str(api), mem or None)


def cluster_wide_var(data: Mapping[str, Any], name: str) -> Any:
    """A cluster-wide variable: the value every host that has it agrees on (None when none has it)."""
    hostvars: Mapping[str, Any] = data.get("_meta", {}).get("hostvars", {})
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


def gateway_settings_from_inventory_data(
    data: Mapping[str, Any],
    inventory: Path,
    pool_group: str = cluster_vars.POOL_GROUP,
    rpc_group: str = cluster_vars.RPC_GROUP,
) -> GatewaySettings:
    """The pool (group `ollama_nodes`, absent = empty) and the gateway's mode and pins."""
    hostvars: Mapping[str, Any] = data.get("_meta", {}).get("hostvars", {})
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
    return GatewaySettings(pool, group_hosts(data, rpc_group), mode, dict(pins), progress)
