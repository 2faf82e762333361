"""What the speed tests share: a scripted worker that answers like rpc-server 7.0.0 (computing nothing), with one
fault injected at a chosen step of the compute measurement."""

from __future__ import annotations

import struct
from collections.abc import Callable

import hostile
from hostile import Conn

from sollol_ops.cluster import wire


def worker(fault: str | None = None, free: int = 1 << 30) -> Callable[[Conn], None]:
    """A peer that answers like rpc-server 7.0.0 with one device (computing nothing), except for `fault`."""

    def script(conn: Conn) -> None:
        if not conn.hello():
            return
        computed = False
        while (req := conn.request()) is not None:
            cmd, payload = req
            if cmd == hostile.DEVICE_COUNT:
                if computed and fault == "sync_garbage":
                    conn.reply(bytes(8))  # 8 bytes where DEVICE_COUNT's reply has 4
                    return
                conn.reply(struct.pack("<I", 1))
            elif cmd == hostile.GET_DEVICE_MEMORY:
                conn.reply(struct.pack("<QQ", free, free))
            elif cmd == hostile.ALLOC_BUFFER:
                (size,) = struct.unpack("<Q", payload[4:12])
                if fault == "alloc_garbage":
                    conn.reply(b"\xde\xad\xbe")
                    return
                conn.reply(struct.pack("<QQ", 0x1000, size - 4096 if fault == "short_alloc" else size))
            elif cmd == hostile.BUFFER_GET_BASE:
                conn.reply(struct.pack("<Q", 0x7F0000000000))
            elif cmd == wire.CMD_GRAPH_COMPUTE:
                computed = True
                if fault == "compute_closes":
                    return
                if fault == "compute_stalls":
                    conn.pause()
                    return
            elif cmd not in (wire.CMD_BUFFER_CLEAR, wire.CMD_GRAPH_RECOMPUTE, wire.CMD_FREE_BUFFER):
                return

    script.__name__ = f"worker_{fault}"
    return script
