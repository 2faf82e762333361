"""Send the llama.cpp RPC HELLO to HOST:PORT and print the server's protocol version (exit 0), or why not.

Exit 0: answered; 2: refused; 3: no answer within the timeout (dropped); 4: protocol error.
"""

import socket
import struct
import sys

HELLO = 14


def main() -> int:
    host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("<BQ", HELLO, 24) + bytes(24))
            data = b""
            while len(data) < 8 + 28:
                chunk = sock.recv(8 + 28 - len(data))
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError:
        print("refused")
        return 2
    except TimeoutError:
        print("timeout")
        return 3
    if len(data) < 8 + 28 or struct.unpack("<Q", data[:8])[0] != 28:
        print(f"bad reply {data!r}")
        return 4
    major, minor, patch = data[8], data[9], data[10]
    print(f"{major}.{minor}.{patch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
