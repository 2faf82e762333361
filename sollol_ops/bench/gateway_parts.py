"""The parts the gateway's bench sections share: pool members and gateways started in their own processes
(through the Reaper), the gateway's status, and the rows of those sections."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from sollol_ops import procs
from sollol_ops.bench.base import BenchBase
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.settings import BenchConfig
from sollol_ops.bench.stats import Stat, row_ratios, summarize
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import BenchError
from sollol_ops.serve import command, server_http, server_log
from sollol_ops.serve.command import StartOptions

CLIENTS = 4  # concurrent clients of the pool comparison (issue 11), and the slots of each pool member


@dataclass
class Gateway:
    """A `sollol-ops gateway` process this bench started."""

    pid: int
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/gateway/status", timeout=5).json()


class GatewayParts(BenchBase):
    """What the gateway's sections start and record: pool members, gateways in their own process, rows."""

    def __init__(
        self, cfg: BenchConfig, toolchain: Toolchain, work: Path, log: Callable[[str], None] = lambda _m: None
    ) -> None:
        super().__init__(cfg, toolchain, work, log)
        self._salt = 10_000
        self._n = 0

    # ---------------------------------------------------------------- parts

    def _port(self, start: int) -> int:
        return procs.free_ports("127.0.0.1", 1, start + os.getpid() % 500)[0]

    @property
    def pool_prompt_tokens(self) -> int:
        return max(1, self.cfg.prompt_tokens // 4)

    def next_salt(self) -> int:
        self._salt += 1
        return self._salt

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("SOLLOL_INVENTORY", "SOLLOL_GATEWAY_API_KEY"):
            env.pop(key, None)
        env.update(XDG_STATE_HOME=str(self.work / f"{name}-state"), XDG_CACHE_HOME=str(self.work / f"{name}-cache"))
        return env

    def start(
        self, argv: Callable[[int], list[str]], log: Path, env: dict[str, str] | None, base: int
    ) -> tuple[int, int]:
        """Spawn argv(port) on a free port and wait until that process itself listens there (not another one
        that took the port meanwhile: others run servers on this machine too); a new port when it exits."""
        for _attempt in range(3):
            port = self._port(base)
            pid = self.reaper.spawn(argv(port), log, env)
            deadline = time.monotonic() + self.cfg.timeout
            while procs.is_alive(pid) and not procs.listens(pid, port):
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{log.stem} did not listen on port {port} within {self.cfg.timeout:g} s (log {log})"
                    )
                time.sleep(0.05)
            if procs.is_alive(pid):
                return pid, port
            self.reaper.stop(pid)
        raise BenchError(f"{log.stem} exited: {server_log.last_line(log)} (log {log})")

    def member(self, model: BenchModel, core: int | None) -> tuple[int, int]:
        """A pool member: plain llama-server, 1 thread, CLIENTS slots, prompt cache off and EOS ignored (every
        request processes its whole prompt and generates exactly the tokens asked, on every route);
        pinned to `core` with taskset. Returns (pid, port)."""
        extra = ["--alias", model.resolved_ref, "-np", str(CLIENTS), "--no-cache-prompt", "--ignore-eos"]

        def argv(port: int) -> list[str]:
            opts = StartOptions(port=port, n_ctx=self.cfg.ctx * CLIENTS, threads=1, extra_args=extra)
            cmd = command.command(self.toolchain, model.blob, opts)
            return cmd if core is None else ["taskset", "-c", str(core), *cmd]

        self._n += 1
        log = self.logs / f"member-{self._n}-core{core}.log"
        pid, port = self.start(argv, log, None, 21700)
        server_http.wait_ready(
            server_http.base_url("127.0.0.1", port),
            lambda: procs.is_alive(pid),
            log,
            self.cfg.timeout,
            poll=0.05,
            error=BenchError,
            hint=f"log {log}",
        )
        return pid, port

    def gateway(self, name: str, inventory: Path, *args: str) -> Gateway:
        """`sollol-ops gateway` in its own process, isolated state; waits for it to listen and a healthy pool."""
        cli = [sys.executable, "-m", "sollol_ops.cli.main", "-i", str(inventory), "gateway"]
        log = self.logs / f"gateway-{name}.log"
        pid, port = self.start(lambda p: [*cli, "--port", str(p), *args], log, self.env(f"gw-{name}"), 21800)
        gw = Gateway(pid, port, log)
        deadline = time.monotonic() + 60
        while True:
            if not procs.is_alive(gw.pid):
                raise BenchError(f"the gateway ({name}) exited: {server_log.last_line(log)} (log {log})")
            try:
                if all(n["healthy"] for n in gw.status()["pool"]):
                    return gw
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the gateway ({name})'s pool was not healthy within 60 s (log {log})")
            time.sleep(0.1)

    # ---------------------------------------------------------------- rows

    def add_row(
        self,
        section: str,
        model: BenchModel,
        setup: str,
        settings: str,
        samples: dict[str, list[float]],
        ref: dict[str, Stat] | None,
        backends: int = 0,
        members: int = 0,
    ) -> tuple[dict[str, Any], dict[str, Stat]]:
        metrics = {name: s for name, vals in samples.items() if (s := summarize(vals)) is not None}
        row = {
            "section": section,
            "model": model.ref,
            "size_mib": model.size_mib,
            "setup": setup,
            "backends": backends,
            "members": members,
            "link": "loopback",
            "settings": settings,
            "metrics": {n: asdict(s) for n, s in metrics.items()},
            "ratios": row_ratios(metrics, ref if ref is not None else metrics),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        self.rows.append(row)
        m = row["metrics"]
        shown = ", ".join(f"{n} {m[n]['median']:.3f}" for n in ("ttft_s", "gen_tps", "agg_tps") if n in m)
        self.say(f"  {section:<12} {settings:<44} {shown}")
        return row, metrics

    def wait_idle(self, gw: Gateway) -> None:
        """Until the gateway's on-demand coordinator is unloaded (phase idle)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                if gw.status()["on_demand"]["phase"] == "idle":
                    return
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
            if not procs.is_alive(gw.pid):
                raise BenchError(f"the gateway exited: {server_log.last_line(gw.log)} (log {gw.log})")
            if time.monotonic() > deadline:
                raise BenchError(f"the gateway's coordinator was not unloaded within 60 s (log {gw.log})")
            time.sleep(0.05)

    def down(self, inv: Path, env: str) -> None:
        """`sollol-ops down` with that inventory, in the state of `env`."""
        cli = [sys.executable, "-m", "sollol_ops.cli.main", "-i", str(inv), "down"]
        subprocess.run(cli, capture_output=True, env=self.env(env), timeout=60, check=False)
