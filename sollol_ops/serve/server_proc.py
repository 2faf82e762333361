"""What /proc says about a running llama-server: which of its backends one of its threads waits on, and
which closed their connection to it."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from pathlib import Path

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
