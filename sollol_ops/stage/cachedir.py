"""Where an rpc-server keeps its -c tensor cache: read from a local process, or given as --cache-dir EP=DIR."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sollol_ops import procs
from sollol_ops.errors import StageError, UsageError


def rpc_cache_dir_of(argv: Sequence[str], environ: dict[str, str]) -> Path | None:
    """rpc-server's cache directory for its command line and environment (tools/rpc/rpc-server.cpp):
    None without -c; else $LLAMA_CACHE/rpc, $XDG_CACHE_HOME/llama.cpp/rpc or ~/.cache/llama.cpp/rpc."""
    if not any(a in ("-c", "--cache") for a in argv[1:]):
        return None
    if environ.get("LLAMA_CACHE"):
        return Path(environ["LLAMA_CACHE"]) / "rpc"
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "llama.cpp" / "rpc"
    return Path(environ.get("HOME", "/root")) / ".cache" / "llama.cpp" / "rpc"


def find_cache_dir(endpoint: str) -> Path:
    """The cache directory of the rpc-server listening on this host at `endpoint`, read from its process."""
    port = int(endpoint.rpartition(":")[2])
    pid = procs.listener_pid(port)
    hint = f"pass --cache-dir {endpoint}=DIR"
    if pid is None:
        raise StageError(f"cannot find the process listening on {endpoint} on this host (another user's?); {hint}")
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError as exc:
        raise StageError(f"cannot read process {pid} listening on {endpoint}: {exc.strerror}; {hint}") from None
    environ = dict(item.split("=", 1) for item in raw if "=" in item)
    found = rpc_cache_dir_of(argv, environ)
    if found is None:
        raise StageError(
            f"the rpc-server on {endpoint} (pid {pid}) runs without -c: it has no tensor cache to stage into; "
            "restart it with -c (roles/rpc_server: rpc_server_cache: true)"
        )
    return found


def parse_cache_dirs(items: Sequence[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        endpoint, sep, directory = item.partition("=")
        if not sep or ":" not in endpoint or not directory:
            raise UsageError(f"--cache-dir {item!r}: write it ENDPOINT=DIR, e.g. 127.0.0.1:50052=/var/cache/rpc")
        out[endpoint] = Path(directory)
    return out
