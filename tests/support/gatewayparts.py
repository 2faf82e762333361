"""Real parts for the gateway tests: llama-server pool members, `sollol-ops gateway` processes, and the
Ollama-kind pool member.

The Ollama-kind member is a test double in one sense only: no Ollama server binary can be installed
here, so it is a `sollol-ops gateway --mode pool` in front of a real llama-server, which speaks Ollama's
wire format (NDJSON streams, /api/tags, /api/ps, /api/show, /api/chat, /api/generate, /api/embed). The
tests check it with the official `ollama` client before another gateway uses it as an `ollama` node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from helpers import REPO
from ports import free_port

from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.dev.devstore import CHATML_TEMPLATE, SMOLLM2_PARAMS, write_store
from sollol_ops.model.ollama import resolve_model
from sollol_ops.serve import command, server_http
from sollol_ops.serve.command import StartOptions

MODEL = "smollm2:135m"


def wait_until(predicate: Any, deadline_s: float, what: str, poll: float = 0.1) -> None:
    """Poll until predicate() is true; fail naming `what` after deadline_s (a bound, not a measurement)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {deadline_s:g}s waiting for {what}")


class Member:
    """A real llama-server serving the test model under its Ollama name (and any further `aliases`, as
    `--alias a,b` does), with embeddings and 4 slots."""

    def __init__(
        self, blob: Path, log_dir: Path, name: str, port: int | None = None, aliases: tuple[str, ...] = ()
    ) -> None:
        self.blob = blob
        self.aliases = (MODEL, *aliases)
        self.name = name
        self.port = port or free_port()
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return server_http.base_url("127.0.0.1", self.port)

    def start(self) -> Member:
        opts = StartOptions(
            host="127.0.0.1",
            port=self.port,
            n_ctx=1024,
            threads=1,
            extra_args=[
                *("--alias", ",".join(self.aliases)),
                *("--embeddings", "--pooling", "mean", "-np", "4", "--metrics"),
            ],
        )
        argv = command.command(find_toolchain(), self.blob, opts)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc
        server_http.wait_ready(self.url, lambda: proc.poll() is None, self.log, timeout=120, hint=str(self.log))
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def slots_busy(self) -> bool:
        slots = httpx.get(f"{self.url}/slots", timeout=5).json()
        return any(s.get("is_processing") for s in slots)

    def predicted_total(self) -> float:
        return (server_http.metrics(self.url, timeout=5) or {}).get("tokens_predicted_total", 0.0)


def pool_inventory(path: Path, nodes: list[tuple[str, int, str]], extra: str = "") -> Path:
    """An inventory whose [ollama_nodes] are (name, port, api) on loopback, plus `extra` text."""
    lines = ["[ollama_nodes]"]
    lines += [f"{n} ansible_host=127.0.0.1 sollol_ollama_port={p} sollol_ollama_api={api}" for n, p, api in nodes]
    path.write_text("\n".join(lines) + "\n\n" + extra)
    return path


class GatewayProc:
    """`sollol-ops gateway` as a user starts it, in its own process; stderr (its log) goes to a file."""

    def __init__(
        self,
        env: dict[str, str],
        inventory: Path,
        log_dir: Path,
        name: str,
        *args: str,
        api_key: str | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.log = log_dir / f"gateway-{name}.log"
        self.api_key = api_key
        full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-m", "sollol_ops.cli.main", "-i", str(inventory), "gateway"]
        argv += ["--port", str(self.port), *args]
        if api_key:
            argv += ["--api-key", api_key]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=full_env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._up, 60, f"gateway {name} to answer /health (log: {self.log})")
        wait_until(self._pool_checked, 60, f"gateway {name}'s pool nodes to be healthy (log: {self.log})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _up(self) -> bool:
        assert self.proc.poll() is None, f"gateway {self.name} exited: {self.log.read_text()[-2000:]}"
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _pool_checked(self) -> bool:
        return all(n["healthy"] for n in self.status()["pool"])

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/gateway/status", headers=self.headers, timeout=5).json()

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.status()["pool"] if n["node"] == name)

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def store_env(root: Path, source_store: Path, names: tuple[str, ...]) -> dict[str, str]:
    """A store in root/store holding the SmolLM2 GGUF (hard-linked) under each of ``names``, and the
    environment of a CLI run isolated in root that reads it."""
    blob = resolve_model(MODEL, source_store).blob
    for name in names:
        write_store(root / "store", name, blob, template=CHATML_TEMPLATE, params=SMOLLM2_PARAMS, link="hardlink")
    return {
        "XDG_STATE_HOME": str(root / "state"),
        "XDG_CACHE_HOME": str(root / "cache"),
        "OLLAMA_MODELS": str(root / "store"),
        "SOLLOL_INVENTORY": "",
    }
