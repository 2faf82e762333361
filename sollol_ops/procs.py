"""Process helpers: detached spawning, liveness that survives pid reuse, and stopping cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def spawn_detached(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Start argv in its own session (outlives the CLI), output appended to log_path. Returns the pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            close_fds=True,
        )
    return proc.pid


def process_start_time(pid: int) -> int | None:
    """Kernel start time of pid (clock ticks since boot), to tell a process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def is_alive(pid: int, start_time: int | None = None) -> bool:
    if pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if state[state.rfind(")") + 2 :].startswith("Z"):
        _reap(pid)
        return False
    return start_time is None or process_start_time(pid) == start_time


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_ours(pid: int, start_time: int | None, argv0: str | None = None) -> bool:
    """True only when pid is provably the process we started: alive, the same kernel start time (a pid
    with no recorded start time proves nothing), and, when given, the same program (argv[0])."""
    if start_time is None or not is_alive(pid, start_time):
        return False
    if argv0 is None:
        return True
    args = cmdline(pid)
    for _ in range(20):  # empty for a moment while a just-forked child is still inside exec()
        if args or not is_alive(pid, start_time):
            break
        time.sleep(0.01)
        args = cmdline(pid)
    return bool(args) and args[0] == argv0


def stop_process(
    pid: int, start_time: int | None, timeout: float = 10.0, group: bool = True, argv0: str | None = None
) -> bool:
    """SIGTERM (the process group when it leads one), wait, then SIGKILL. True if it was running.
    Nothing is signalled unless the process is proven ours (is_ours): a reused pid is left alone."""
    try:
        pidfd = os.pidfd_open(pid)  # pins the process: from here on the pid cannot name another one
    except OSError:
        return False
    try:
        if not is_ours(pid, start_time, argv0):
            return False

        def send(sig: int) -> None:
            try:
                if group and os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                pass

        send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if not is_alive(pid, start_time):
                return True
            time.sleep(0.05)
        send(signal.SIGKILL)
        for _ in range(100):
            _reap(pid)
            if not is_alive(pid, start_time):
                break
            time.sleep(0.05)
        return True
    finally:
        os.close(pidfd)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def is_this_host(host: str) -> bool:
    """Whether an endpoint's host is this machine: loopback, this machine's name, or an IP address one of
    its interfaces has (a socket can bind to it). Other names are not resolved (no DNS in `up`'s path)."""
    if is_loopback(host) or host in (socket.gethostname(), socket.getfqdn() if "." in host else ""):
        return True
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socket.inet_pton(family, host)
    except OSError:
        return False
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(host: str, count: int, start: int) -> list[int]:
    """`count` consecutive free ports from `start` on."""
    port = start
    while port + count <= 65535:
        if all(not port_in_use(host, p) for p in range(port, port + count)):
            return list(range(port, port + count))
        port += 1
    raise OSError(f"no {count} consecutive free ports from {start}")


def listen_inodes(port: int) -> set[str]:
    """The socket inodes listening on TCP `port` (any address), from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def _holds(pid: int, sockets: set[str]) -> bool:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in sockets:
                return True
        except OSError:
            continue
    return False


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a socket listening on TCP `port` (not another process that took it)."""
    sockets = {f"socket:[{i}]" for i in listen_inodes(port)}
    return bool(sockets) and _holds(pid, sockets)


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` (the first found; None when none, or not visible to us)."""
    sockets = {f"socket:[{i}]" for i in listen_inodes(port)}
    if not sockets:
        return None
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit() and _holds(int(pid_dir.name), sockets):
            return int(pid_dir.name)
    return None
