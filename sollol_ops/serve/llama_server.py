"""Everything sollol-ops knows about llama-server, in one place: the command line for each way it is
started (sharded by a placement plan, upstream's own defaults over RPC, or plain local), waiting for
`/health` with progress, streamed chat completions (TTFT, `timings`, stall time-out), its Prometheus
counters, the layer distribution from its `-lv 4` log, and what /proc says about a running one (which
backend it waits on, which backends closed their connection). The coordinator, the benchmark and the
gateway use it; nothing else builds a llama-server command line or talks to one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops import procs
from sollol_ops.cluster.placement import LocalDevice, Plan
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import CoordinatorError, SollolError, UsageError

MIB = 1 << 20


@dataclass
class StartOptions:
    """How llama-server is started (the parts that are not the placement plan)."""

    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 4096
    parallel: int = 1
    threads: int | None = None
    extra_args: list[str] = field(default_factory=list)
    alias: str | None = None


# llama-server flags that sollol-ops sets itself, from its own options or its plan. Passing one again through
# --server-arg would make llama-server do something other than what the state file, `status` and the
# placement table say (llama.cpp takes the last occurrence), so they are refused.
MANAGED_FLAGS: dict[str, str] = {
    "--host": "--host",
    "--port": "--port",
    "-m": "the MODEL argument",
    "--model": "the MODEL argument",
    "--rpc": "the inventory",
    "-dev": "the placement plan",
    "--device": "the placement plan",
    "-ts": "the placement plan",
    "--tensor-split": "the placement plan",
    "-ngl": "the placement plan",
    "--n-gpu-layers": "the placement plan",
    "--gpu-layers": "the placement plan",
    "-c": "--ctx-size",
    "--ctx-size": "--ctx-size",
    "-np": "--parallel",
    "--parallel": "--parallel",
    "-t": "--threads",
    "--threads": "--threads",
    "-a": "the model name",
    "--alias": "the model name",
    "-lv": "the log level sollol-ops parses",
    "--log-verbosity": "the log level sollol-ops parses",
    "--log-file": "the coordinator log sollol-ops parses",
}


def check_extra_args(extra: list[str]) -> None:
    """UsageError when a --server-arg repeats a flag sollol-ops manages."""
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in MANAGED_FLAGS:
            raise UsageError(
                f"--server-arg {arg} conflicts with what sollol-ops sets itself; use {MANAGED_FLAGS[flag]} instead"
            )


def command(
    toolchain: Toolchain,
    blob: Path,
    opts: StartOptions,
    plan: Plan | None = None,
    rpc: Sequence[str] = (),
) -> list[str]:
    """The llama-server command line. With a plan: sharded as sollol-ops serves (explicit --device and a
    matching --tensor-split, every layer offloaded, metrics, the -lv 4 log the distribution is parsed
    from). With RPC endpoints but no plan: upstream's own defaults (`--rpc ... -ngl 99`). With neither:
    a plain local llama-server (the benchmark's baseline)."""
    base = [str(toolchain.llama_server), "--model", str(blob)]
    where = ["--host", opts.host, "--port", str(opts.port)]
    if plan is None and rpc:
        return [*base, "--rpc", ",".join(rpc), "-ngl", "99", "--ctx-size", str(opts.n_ctx), *where, *opts.extra_args]
    threads = opts.threads or (
        default_threads(plan.rpc_endpoints, plan.host_layers) if plan is not None else default_threads(())
    )
    if plan is None:
        return [*base, "--ctx-size", str(opts.n_ctx), "--threads", str(threads), *where, *opts.extra_args]
    # Every layer offloaded, unless the coordinator's CPU keeps the first ones (plan.n_gpu_layers).
    ngl = "999" if plan.n_gpu_layers is None else str(plan.n_gpu_layers)
    argv = [
        *base,
        "--rpc", ",".join(plan.rpc_endpoints),
        "--device", ",".join(plan.devices),
        "--tensor-split", ",".join(f"{s:g}" for s in plan.tensor_split),
        "--n-gpu-layers", ngl,
        "--fit", "off",
        "--ctx-size", str(opts.n_ctx),
        "--parallel", str(opts.parallel),
        "--threads", str(threads),
        *where,
        "--metrics",
        "-lv", "4",
    ]  # fmt: skip
    if opts.alias:
        argv += ["--alias", opts.alias]
    return argv + list(opts.extra_args)


_LIST_DEVICE = re.compile(r"^\s+(\S+?)\s*:\s*(.*)\((\d+) MiB, (\d+) MiB free\)\s*$")


def parse_list_devices(text: str) -> list[LocalDevice]:
    """The devices of `llama-server --list-devices` (`  CUDA0: NVIDIA ... (24135 MiB, 23695 MiB free)`; a
    CPU-only build prints `  (none)`: llama.cpp lists no CPU device there, it cannot be a --device)."""
    out = []
    for line in text.splitlines():
        if m := _LIST_DEVICE.match(line):
            out.append(LocalDevice(m.group(1), m.group(2).strip(), int(m.group(3)) * MIB, int(m.group(4)) * MIB))
    return out


def list_devices(toolchain: Toolchain, timeout: float = 60.0) -> list[LocalDevice]:
    """The coordinator's own devices, from its llama-server (GPU backends initialise: allow some time)."""
    try:
        proc = subprocess.run(
            [str(toolchain.llama_server), "--list-devices"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CoordinatorError(f"`llama-server --list-devices` failed: {exc}") from exc
    if proc.returncode != 0:
        raise CoordinatorError(f"`llama-server --list-devices` exited {proc.returncode}: {last_text(proc.stderr)}")
    return parse_list_devices(proc.stdout)


def last_text(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


# llama-server's threads when an rpc-server of its plan runs on the same host (see default_threads).
COLOCATED_THREADS = 1


def default_threads(rpc_endpoints: Sequence[str], host_layers: int = 0) -> int:
    """llama-server's --threads when none is given: all cores, unless one of its rpc-servers runs on this
    host; then COLOCATED_THREADS. Every layer is on an RPC device, so llama-server's own CPU work is the
    input embeddings and sampling; more threads than that need would only spin on cores the rpc-servers
    here compute on (measured: docs/benchmarks.md, "Defaults vs. tuned settings"). When the coordinator's
    CPU keeps layers itself (host_layers > 0), it computes them: the cores are shared evenly between it and
    the rpc-servers on this host."""
    cores = max(1, os.cpu_count() or 1)
    here = sum(1 for e in rpc_endpoints if procs.is_this_host(e.rsplit(":", 1)[0].strip("[]")))
    if host_layers > 0:
        return max(1, cores // (1 + here))
    return COLOCATED_THREADS if here else cores


def base_url(host: str, port: int) -> str:
    """Where to connect to a llama-server listening on host:port (0.0.0.0 / :: are reached via loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _split(url: str) -> tuple[str, int]:
    hostport = url.removeprefix("http://")
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def health(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of /health (200 ready, 503 loading), None when nothing answers. A bare GET over a
    socket: `up` polls this while llama-server loads, and http.client/urllib would cost the command
    ~25 ms of imports before it can start anything."""
    host, port = _split(url)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"GET /health HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
    head = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            while b"\r\n" not in head and len(head) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except (OSError, ValueError):
        return None
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def wait_ready(
    url: str,
    alive: Callable[[], bool],
    log: Path,
    timeout: float = 600.0,
    on_progress: Callable[[float, str], None] | None = None,
    started: float | None = None,
    poll: float = 0.02,
    error: type[SollolError] = CoordinatorError,
    hint: str = "see `sollol-ops logs`",
) -> float:
    """Poll /health until 200; seconds since ``started`` (a perf_counter reading, default now). Raises
    ``error`` with the log's last error when the process dies, or its last line on time-out.

    The poll is tight (20 ms, a connect that is refused or a 503 costs well under a millisecond) so
    that readiness is noticed when it happens; the log is read for ``on_progress`` at most every
    PROGRESS_EVERY seconds, as a -lv 4 log is long and re-reading it each poll would compete with the
    load for the CPU."""
    t0 = time.perf_counter() if started is None else started
    shown = float("-inf")
    while True:
        elapsed = time.perf_counter() - t0
        if not alive():
            raise error(f"llama-server exited while loading: {last_error(log)} ({hint})")
        if health(url, timeout=1.0) == 200:
            return time.perf_counter() - t0
        if elapsed > timeout:
            raise error(f"llama-server not ready after {timeout:g}s ({hint}); last: {last_line(log)}")
        if on_progress is not None and elapsed - shown >= PROGRESS_EVERY:
            shown = elapsed
            on_progress(elapsed, last_line(log))
        time.sleep(poll)


PROGRESS_EVERY = 0.25

_NOISE = re.compile(r"^[\d.]+ [A-Z] ")


def _strip(line: str) -> str:
    return _NOISE.sub("", line).strip()


def last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return _strip(lines[-1])[:160] if lines else ""


def last_error(log: Path) -> str:
    try:
        lines = [_strip(ln) for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if re.search(r"error|failed|mismatch|unable|cannot|out of memory", ln, re.I):
            return ln[:200]
    return lines[-1][:200] if lines else "empty log"


# --------------------------------------------------------------------------- distribution from the log

_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_KV_BUF = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB")
_COMPUTE_BUF = re.compile(r"(?:sched_reserve|llama_context):\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_RPC_NAME = re.compile(r"^RPC\d+\[(.+)\]$")


@dataclass
class DeviceUse:
    name: str  # endpoint for RPC devices; `coordinator CPU` (CPU, CPU_Mapped, CUDA_Host, ...), `coordinator CUDA0`
    model_mib: float = 0.0
    kv_mib: float = 0.0
    compute_mib: float = 0.0
    layers: int | None = None

    @property
    def is_rpc(self) -> bool:
        return ":" in self.name


@dataclass
class Distribution:
    devices: list[DeviceUse]
    offloaded: tuple[int, int] | None

    def rpc(self) -> list[DeviceUse]:
        return [d for d in self.devices if d.is_rpc]


def parse_distribution(log_text: str, kv_per_layer: int | None = None) -> Distribution:
    """Where the layers went, from llama-server's -lv 4 log (buffer sizes per device)."""
    devices: dict[str, DeviceUse] = {}

    def dev(raw: str) -> DeviceUse:
        m = _RPC_NAME.match(raw)
        if m:
            name = m.group(1)
        elif raw.startswith("CPU") or raw.endswith("_Host"):  # host memory, pinned (CUDA_Host) or not
            name = "coordinator CPU"
        else:
            name = f"coordinator {raw}"
        return devices.setdefault(name, DeviceUse(name))

    offloaded = None
    for line in log_text.splitlines():
        if m := _MODEL_BUF.search(line):
            dev(m.group(1)).model_mib += float(m.group(2))
        elif m := _KV_BUF.search(line):
            dev(m.group(1)).kv_mib += float(m.group(2))
        elif m := _COMPUTE_BUF.search(line):
            dev(m.group(1)).compute_mib += float(m.group(2))
        elif m := _OFFLOADED.search(line):
            offloaded = (int(m.group(1)), int(m.group(2)))
    if kv_per_layer:
        for d in devices.values():
            if d.is_rpc or d.kv_mib > 0:  # the coordinator's rows have layers when it keeps some
                d.layers = round(d.kv_mib * MIB / kv_per_layer)
    ordered = sorted(devices.values(), key=lambda d: (not d.is_rpc, 0))
    return Distribution(ordered, offloaded)


class Stalled(CoordinatorError):
    """A streamed request made no progress for the stall time-out (llama.cpp's RPC client never times out)."""


@dataclass
class ChatResult:
    text: str
    ttft_s: float  # to the first chunk carrying content (total_s when none did)
    total_s: float
    timings: dict[str, Any] = field(default_factory=dict)  # llama-server's `timings` of the last chunk


def stream_chat(
    url: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    stall_timeout: float = 120.0,
    extra: dict[str, Any] | None = None,
    on_token: Callable[[str], None] | None = None,
    deadline_s: float | None = None,
) -> ChatResult:
    """One streamed OpenAI chat completion. Each read waits at most ``stall_timeout`` (then Stalled);
    ``deadline_s`` bounds the whole request; a stream that ends before `[DONE]` is an error."""
    import http.client  # not at module level: `up` never needs it (see health)

    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True, **(extra or {})}
    host, port = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=stall_timeout)
    parts: list[str] = []
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    ttft = None
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            detail = " ".join(resp.read(4096).decode(errors="replace").split())[:200]
            raise CoordinatorError(f"chat completion at {url} failed: HTTP {resp.status} {detail}")
        while True:
            if deadline_s is not None and time.perf_counter() - t0 > deadline_s:
                raise CoordinatorError(f"chat completion at {url} did not finish within {deadline_s:g}s")
            line = resp.readline(1 << 20)
            if not line:
                raise CoordinatorError(
                    f"llama-server at {url} ended the answer before its end (did it die? `sollol-ops status`, "
                    "`sollol-ops logs`)"
                )
            text = line.decode(errors="replace").strip()
            if not text.startswith("data:"):
                continue
            payload = text[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(piece)
                    if on_token is not None:
                        on_token(piece)
            if chunk.get("timings"):
                timings = chunk["timings"]
    except TimeoutError as exc:
        raise Stalled(f"llama-server at {url} sent nothing for {stall_timeout:g}s") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise CoordinatorError(f"chat completion at {url} failed: {reason}") from exc
    finally:
        conn.close()
    total = time.perf_counter() - t0
    return ChatResult("".join(parts), ttft if ttft is not None else total, total, timings)


# --------------------------------------------------------------------------- a running llama-server


def metrics(url: str, timeout: float) -> dict[str, float] | None:
    """llama-server's Prometheus counters (`--metrics`), or None when they cannot be read."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:
            text = resp.read(1 << 20).decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("llamacpp:"):
            with contextlib.suppress(ValueError):
                values[name[9:]] = float(value)
    return values


def is_stalled(url: str, window: float, poll: float = 0.25) -> bool:
    """True when requests are in flight but llama-server completes no model step (its `n_decode_total`
    counter stands still) for ``window`` seconds. Returns as soon as a step completes, so a busy,
    progressing server costs one or two polls; an idle one costs a single read."""
    first = metrics(url, timeout=min(window, 5.0))
    if not first or first.get("requests_processing", 0) <= 0:
        return False
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        time.sleep(poll)
        now = metrics(url, timeout=min(window, 5.0))
        if now is None:
            continue
        if now.get("requests_processing", 0) <= 0 or now.get("n_decode_total") != first.get("n_decode_total"):
            return False
    return True


# Syscalls a thread blocked reading a socket sits in, by machine (x86_64, aarch64).
_READ_SYSCALLS = {"x86_64": {0, 45, 47}, "aarch64": {63, 207, 212}}


TCP_ESTABLISHED, TCP_CLOSE_WAIT = 1, 8


def _socket_peers(pid: int) -> dict[int, tuple[str, int, int]]:
    """fd -> (remote address, port, TCP state) of pid's TCP sockets, from /proc."""
    inodes: dict[int, int] = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[int(target[8:-1])] = int(fd)
    except OSError:
        return {}
    peers: dict[int, tuple[str, int, int]] = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or int(fields[9]) not in inodes:
                continue
            addr_hex, port_hex = fields[2].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = socket.inet_ntop(family, raw)
            if address.startswith("::ffff:"):
                address = address[7:]
            peers[inodes[int(fields[9])]] = (address, int(port_hex, 16), int(fields[3], 16))
    return peers


def _backend_of(backends: Sequence[str], address: str, port: int) -> str | None:
    for endpoint in backends:
        host, _, p = endpoint.rpartition(":")
        if int(p) == port and address in _addresses(host.strip("[]")):
            return endpoint
    return None


def lost_backends(pid: int, backends: Sequence[str]) -> list[str]:
    """Backends whose rpc-server closed its connection to our llama-server (the socket sits in
    CLOSE_WAIT: the worker process died or was restarted); llama.cpp only notices on the next request,
    which then fails."""
    lost = set()
    for address, port, tcp_state in _socket_peers(pid).values():
        if tcp_state == TCP_CLOSE_WAIT and (endpoint := _backend_of(backends, address, port)):
            lost.add(endpoint)
    return [b for b in backends if b in lost]


def _addresses(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


def blocked_on(pid: int, backends: Sequence[str]) -> list[str]:
    """The coordinator's backends that one of llama-server's threads is blocked reading from (from
    /proc/PID/task/*/syscall; empty when that is not readable or no thread waits on a backend)."""
    reads = _READ_SYSCALLS.get(os.uname().machine, set())
    waiting_fds: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
        except OSError:
            continue
        if len(fields) >= 2 and fields[0].isdigit() and int(fields[0]) in reads:
            waiting_fds.add(int(fields[1], 16))
    if not waiting_fds:
        return []
    peers = _socket_peers(pid)
    suspects = {_backend_of(backends, peers[fd][0], peers[fd][1]) for fd in waiting_fds if fd in peers}
    return [b for b in backends if b in suspects]
