"""Detached helper of the RPC probe: hold a socket whose HELLO is still queued at an rpc-server until
the server answers, read the reply, then close. Closing earlier could make the server die of SIGPIPE."""

from __future__ import annotations

import socket
import sys


def main(argv: list[str]) -> int:
    fd, patience = int(argv[0]), float(argv[1])
    sock = socket.socket(fileno=fd)
    sock.settimeout(patience)
    try:
        header = b""
        while len(header) < 8:
            chunk = sock.recv(8 - len(header))
            if not chunk:
                return 0
            header += chunk
        remaining = int.from_bytes(header, "little")
        while remaining > 0:
            chunk = sock.recv(min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)
    except OSError:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
