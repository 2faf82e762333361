"""Where the inventory is, and what `ansible-inventory --list` says of it: run under bounds, cached privately.

The inventory is read through `ansible-inventory --list`, the supported interface (ansible's Python
API is internal). Its JSON is cached, keyed by the inventory files' paths, sizes and mtimes (including
group_vars/ and host_vars/) and the ANSIBLE_* environment, so repeated read commands skip the
~0.5 s ansible start-up. Dynamic inventories (executable scripts, inventory plugin configs) are never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sollol_ops.cluster.yaml_aliases import check_yaml_aliases
from sollol_ops.errors import InventoryError
from sollol_ops.paths import cache_dir

ENV_INVENTORY = "SOLLOL_INVENTORY"
_CACHE_VERSION = "1"

# ansible-inventory runs with bounds: hostile input (a YAML alias bomb that slips past the check of
# yaml_aliases, a host range of millions) ends in an InventoryError instead of eating the machine.
ANSIBLE_INVENTORY_MEMORY = 1 << 30  # RLIMIT_AS; a plain run needs about 60 MiB resident
ANSIBLE_INVENTORY_OUTPUT = 64 << 20  # RLIMIT_FSIZE on its JSON (stdout goes to a file): what we read at most
ANSIBLE_INVENTORY_TIMEOUT = 120  # seconds; dynamic inventories may ask a cloud API


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
