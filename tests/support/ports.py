"""The tests' one port allocator: free loopback ports, each claimed so no other test or pytest run gets it too.

A port a test picks is often bound only later (a gateway's coordinator port on the first request, `local
start`'s rpc-servers in a child process), so "free now" is not enough: every port handed out is claimed by a
file naming this process (pid and start time) until the process ends. Claims live in the file system, not in
this module, so concurrent pytest runs on one machine (several checkouts) skip each other's ports as well.
Ports come from below the kernel's ephemeral range, where no outgoing connection takes one meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from sollol_ops import procs

HOST = "127.0.0.1"
FIRST_PORT = 20000
LAST_PORT = 32767  # net.ipv4.ip_local_port_range starts at 32768 by default
CLAIMS = Path(tempfile.gettempdir()) / f"sollol-ops-test-ports-{os.getuid()}"


def _claimed(port: int) -> bool:
    """Whether a live process (this one included) holds the claim on `port`."""
    try:
        pid, start_time = (int(field) for field in (CLAIMS / str(port)).read_text().split())
    except (OSError, ValueError):
        return False
    return procs.is_alive(pid, start_time)


def _claim(port: int) -> None:
    (CLAIMS / str(port)).write_text(f"{os.getpid()} {procs.process_start_time(os.getpid())}\n")


def free_ports(count: int) -> list[int]:
    """`count` consecutive loopback ports, free and unclaimed, now claimed by this process (e.g. for a
    `local start --base-port` that runs `count` rpc-servers)."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    with open(CLAIMS / ".lock", "w") as lock:  # one allocation at a time, across processes
        fcntl.flock(lock, fcntl.LOCK_EX)
        port = FIRST_PORT
        while port + count - 1 <= LAST_PORT:
            block = range(port, port + count)
            taken = [p for p in block if _claimed(p) or procs.port_in_use(HOST, p)]
            if not taken:
                for p in block:
                    _claim(p)
                return list(block)
            port = taken[-1] + 1
    raise OSError(f"no {count} consecutive free test ports in {FIRST_PORT}..{LAST_PORT}")


def free_port() -> int:
    """One free loopback port, claimed by this process."""
    return free_ports(1)[0]
