"""Parts of the staging tests: a model whose tensors go through the rpc-server cache, rpc-servers with their
own cache directories, a counting TCP relay between llama-server and an rpc-server, a deterministic answer."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ports import free_port

from sollol_ops import procs
from sollol_ops.cluster.local import LocalServer, RpcServerSpec, start_rpc_server, wait_ready
from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.dev.devstore import CHATML_TEMPLATE, write_store
from sollol_ops.dev.synthetic import SyntheticSpec, read_tokenizer, write_synthetic_gguf
from sollol_ops.stage.worker import cache_entries

# 3 layers of n_embd 2048 (Q8_0): each block's three FFN matrices (11.7 MiB) and the tied token_embd
# (102 MiB) are over llama.cpp's 10 MiB hash threshold; attention matrices (4.3 MiB) are not.
SPEC = SyntheticSpec(3, 2048, "q8_0")
MODEL = SPEC.ref


def synthetic_store(root: Path, tokenizer_source: Path) -> Path:
    gguf = write_synthetic_gguf(root / "model.gguf", SPEC, read_tokenizer(tokenizer_source))
    store = root / "store"
    write_store(store, MODEL, gguf, template=CHATML_TEMPLATE, params={"stop": ["<|im_end|>"]}, link="hardlink")
    return store


@dataclass
class Worker:
    """A real rpc-server with -c and a cache directory of its own (LLAMA_CACHE=<home>, cache in <home>/rpc)."""

    endpoint: str
    server: LocalServer
    home: Path

    @property
    def cache(self) -> Path:
        return self.home / "rpc"

    def files(self) -> dict[str, int]:
        return {name: st.st_size for name, st in cache_entries(self.cache).items()}


def start_workers(tmp: Path, count: int) -> list[Worker]:
    out = []
    for i in range(count):
        port = free_port()
        home = tmp / f"worker{i}"
        spec = RpcServerSpec("127.0.0.1", port, 1, tmp / f"rpc{i}.log", cache_dir=home)
        out.append(Worker(f"127.0.0.1:{port}", start_rpc_server(find_toolchain(), spec), home))
    wait_ready([w.endpoint for w in out], timeout=20)
    return out


def stop_workers(workers: list[Worker]) -> None:
    for w in workers:
        procs.stop_process(w.server.pid, w.server.start_time, timeout=5)


@dataclass
class Relay:
    """A TCP relay from a free loopback port to `target`, counting the bytes sent towards the target."""

    target: str
    port: int = 0
    to_target: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listener: socket.socket | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Relay:
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def reset(self) -> int:
        with self._lock:
            n, self.to_target = self.to_target, 0
        return n

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            host, _, port = self.target.rpartition(":")
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
                if count:
                    with self._lock:
                        self.to_target += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()


def inventory(path: Path, endpoints: list[str], host_vars: str = "") -> str:
    lines = ["[rpc_servers]"]
    lines += [
        f"w{i} ansible_host={e.rpartition(':')[0]} sollol_rpc_port={e.rpartition(':')[2]} {host_vars}".rstrip()
        for i, e in enumerate(endpoints)
    ]
    lines += ["", "[coordinator]", "localhost ansible_connection=local", ""]
    path.write_text("\n".join(lines))
    return str(path)


def answer(base_url: str, prompt: str = "The capital of France is", n: int = 16) -> list[int]:
    """The tokens llama-server generates greedily (temperature 0, fixed seed)."""
    body = json.dumps(
        {"prompt": prompt, "n_predict": n, "temperature": 0, "seed": 42, "return_tokens": True, "cache_prompt": False}
    ).encode()
    req = urllib.request.Request(f"{base_url}/completion", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        data = json.loads(resp.read())
    assert data.get("tokens"), data
    return list(data["tokens"])
