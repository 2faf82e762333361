"""Hostile RPC peers: real TCP servers on loopback that speak (or abuse) llama.cpp's RPC wire format.

Each peer runs one scripted behaviour per accepted connection, every connection in its own thread, so
the probe's knock and its HELLO connection meet the same script. `close()` (or leaving the `with`
block) stops every thread within a bounded time: scripts wait only through `Conn.pause()`, which wakes
up when the peer stops.

A script starts like a real rpc-server: `conn.request()` returns None when the client sent nothing
but EOF (the probe's knock), and the script then returns, which closes the connection quietly.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

ALLOC_BUFFER = 0
BUFFER_GET_BASE = 3
SET_TENSOR = 6
GET_DEVICE_MEMORY = 11
HELLO = 14
DEVICE_COUNT = 15


class Conn:
    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self.sock = sock
        self.stop = stop

    def _recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def request(self) -> tuple[int, bytes] | None:
        """The next request (cmd, payload); None on EOF or error (a knock, or the client left)."""
        self.sock.settimeout(None)
        header = self._recv_exact(9)
        if header is None:
            return None
        cmd, size = struct.unpack("<BQ", header)
        payload = self._recv_exact(size) if size else b""
        return None if payload is None else (cmd, payload)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def reply(self, payload: bytes) -> bool:
        return self.send(struct.pack("<Q", len(payload)) + payload)

    def pause(self, seconds: float | None = None) -> bool:
        """Wait `seconds` (None: until the peer stops). False when the peer is stopping."""
        return not self.stop.wait(seconds)

    def reset(self) -> None:
        """Abort the connection: RST instead of FIN (SO_LINGER with a zero timeout)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def hello(self, version: tuple[int, int, int] = (7, 0, 0)) -> bool:
        """Wait for HELLO and answer it like rpc-server 7.0.0. False on a knock or a wrong first request."""
        req = self.request()
        if req is None or req[0] != HELLO:
            return False
        return self.reply(bytes(version) + b"\0" + bytes(24))


Script = Callable[[Conn], None]


class HostilePeer:
    def __init__(self, script: Script, name: str = "", host: str = "127.0.0.1") -> None:
        self.script = script
        self.name = name or getattr(script, "__name__", "peer")
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self.host, self.port = self._listener.getsockname()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name=f"hostile-{self.name}")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> HostilePeer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._acceptor.join(timeout=5)
        for t in list(self._threads):
            t.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                self._conns.append(sock)
            t = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, sock: socket.socket) -> None:
        try:
            self.script(Conn(sock, self._stop))
        except OSError:
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass


# ------------------------------------------------------------------------------------------- scripts


def silent(conn: Conn) -> None:
    """Accepts every connection and never reads or answers (also not the knock)."""
    conn.pause()


def stalls_after_hello(conn: Conn) -> None:
    """Gives the knock a free turn, then reads HELLO and never answers: a probe's HELLO left unanswered."""
    if conn.request() is None:
        return
    conn.pause()


def drips_replies(conn: Conn) -> None:
    """A valid 7.0.0 server with 200 devices that sends every reply one byte per half second: each read
    gets a byte well within any per-read time-out, and the whole probe would take about 40 minutes."""

    def drip(payload: bytes) -> bool:
        for b in struct.pack("<Q", len(payload)) + payload:
            if not conn.pause(0.5) or not conn.send(bytes([b])):
                return False
        return True

    while (req := conn.request()) is not None:
        cmd, _ = req
        if cmd == HELLO:
            reply = bytes([7, 0, 0, 0]) + bytes(24)
        elif cmd == DEVICE_COUNT:
            reply = struct.pack("<I", 200)
        elif cmd == GET_DEVICE_MEMORY:
            reply = struct.pack("<QQ", 1 << 30, 1 << 30)
        else:
            return
        if not drip(reply):
            return


def endless_devices(conn: Conn) -> None:
    """A valid 7.0.0 server that announces 2^32-1 devices and answers GET_DEVICE_MEMORY for any of them."""
    if not conn.hello():
        return
    while (req := conn.request()) is not None:
        cmd, _ = req
        if cmd == DEVICE_COUNT:
            ok = conn.reply(struct.pack("<I", 0xFFFF_FFFF))
        elif cmd == GET_DEVICE_MEMORY:
            ok = conn.reply(struct.pack("<QQ", 1 << 30, 1 << 30))
        else:
            return
        if not ok:
            return


def oversized_hello(conn: Conn) -> None:
    """Announces a HELLO reply of 2^62 bytes and then streams zeros for as long as anyone reads."""
    if conn.request() is None:
        return
    conn.send(struct.pack("<Q", 1 << 62))
    chunk = bytes(65536)
    while not conn.stop.is_set() and conn.send(chunk):
        pass


def oversized_device_count(conn: Conn) -> None:
    """A valid HELLO, then a DEVICE_COUNT reply announced at 1 GiB."""
    if not conn.hello() or conn.request() is None:
        return
    conn.send(struct.pack("<Q", 1 << 30) + bytes(4096))
    conn.pause()


def garbage_reply(conn: Conn) -> None:
    """Answers HELLO with 64 bytes of garbage (its "size" header reads as 0xefbeaddeefbeadde) and closes."""
    if conn.request() is None:
        return
    conn.send(b"\xde\xad\xbe\xef" * 16)


def garbage_hello(conn: Conn) -> None:
    """Answers HELLO with a well-framed 28-byte reply full of garbage (version 222.173.190)."""
    if conn.request() is None:
        return
    conn.reply(b"\xde\xad\xbe\xef" * 7)
    conn.pause()


def speaks_first(conn: Conn) -> None:
    """Something else on the port: greets every connection with a banner (like SSH)."""
    conn.send(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    conn.pause()


def resets(conn: Conn) -> None:
    """Resets every connection at once (SO_LINGER 0)."""
    conn.reset()


def resets_on_hello(conn: Conn) -> None:
    """Gives the knock a free turn, then resets the connection when HELLO arrives."""
    if conn.request() is None:
        return
    conn.reset()


def closes_mid_hello(conn: Conn) -> None:
    """Sends the HELLO reply's header and 10 of its 28 bytes, then closes."""
    if conn.request() is None:
        return
    conn.send(struct.pack("<Q", 28) + bytes([7, 0, 0, 0]) + bytes(6))


def closes_mid_device_count(conn: Conn) -> None:
    """A valid HELLO, then 2 of the 4 bytes of the DEVICE_COUNT reply, then closes."""
    if not conn.hello() or conn.request() is None:
        return
    conn.send(struct.pack("<Q", 4) + b"\x01\x00")


def stalls_on_device_count(conn: Conn) -> None:
    """A valid HELLO, then DEVICE_COUNT is never answered."""
    if not conn.hello() or conn.request() is None:
        return
    conn.pause()


def stalls_mid_device_memory(conn: Conn) -> None:
    """A valid HELLO and DEVICE_COUNT (1), then half a GET_DEVICE_MEMORY reply and silence."""
    if not conn.hello():
        return
    if conn.request() is None or not conn.reply(struct.pack("<I", 1)):
        return
    if conn.request() is None:
        return
    conn.send(struct.pack("<Q", 16) + bytes(8))
    conn.pause()


def stalls_upload(conn: Conn) -> None:
    """A valid server until the upload: answers HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY, ALLOC_BUFFER and
    BUFFER_GET_BASE, then reads only the SET_TENSOR header and stops reading (a zero TCP window)."""
    if not conn.hello():
        return
    while True:
        conn.sock.settimeout(None)
        header = conn._recv_exact(9)
        if header is None:
            return
        cmd, size = struct.unpack("<BQ", header)
        if cmd == SET_TENSOR:
            conn.pause()
            return
        payload = conn._recv_exact(size) if size else b""
        if payload is None:
            return
        if cmd == DEVICE_COUNT:
            ok = conn.reply(struct.pack("<I", 1))
        elif cmd == GET_DEVICE_MEMORY:
            ok = conn.reply(struct.pack("<QQ", 1 << 30, 1 << 30))
        elif cmd == ALLOC_BUFFER:
            ok = conn.reply(struct.pack("<QQ", 0x5000, struct.unpack("<IQ", payload)[1]))
        elif cmd == BUFFER_GET_BASE:
            ok = conn.reply(struct.pack("<Q", 0x7000))
        else:
            return
        if not ok:
            return


# ---------------------------------------------------------------------------------- leak detection

LEAK_MARK_VAR = "SOLLOL_TEST_LEAK_MARK"


def marked_processes(mark: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process but this one whose environment carries LEAK_MARK_VAR=mark:
    whatever a command started while the mark was in its environment and that is still running."""
    needle = f"{LEAK_MARK_VAR}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            if needle not in env.split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2 :].startswith("Z"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry.name), cmdline))
    return found


def drain_processes() -> list[int]:
    """Every process on this machine running the probe's old detached drainer (sollol_ops._drain)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"sollol_ops._drain" in cmdline:
            pids.append(int(entry.name))
    return pids
