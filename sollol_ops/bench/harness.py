"""The harness of the sharding bench: one setup's llama-server loaded cold and warm, queried (streamed) and
unloaded, its samples summarised into rows."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sollol_ops import procs
from sollol_ops.bench.backends import RpcBackends
from sollol_ops.bench.base import BenchBase, make_prompt
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.server import Query, Server, server_argv, stream_chat, wait_health
from sollol_ops.bench.settings import BenchConfig, Settings
from sollol_ops.bench.stats import Stat, row_ratios, summarize
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import BenchError


class Harness(BenchBase):
    """One setup's llama-server loaded, queried and unloaded, its samples summarised into rows."""

    def __init__(
        self, cfg: BenchConfig, toolchain: Toolchain, work: Path, log: Callable[[str], None] = lambda _m: None
    ) -> None:
        super().__init__(cfg, toolchain, work, log)
        self.baselines: dict[str, dict[str, Stat]] = {}
        self._runs = 0

    # ---- llama-server

    def port(self) -> int:
        """A free port for a llama-server of this run."""
        # From a place of this run's own (by pid): two benches on one host (other users, CI) that both took
        # the lowest free port would race for it between the check and llama-server's bind.
        return procs.free_ports("127.0.0.1", 1, 18700 + (os.getpid() * 7) % 8000)[0]

    def next_run(self) -> int:
        """A new number for this run's logs and cache directories."""
        self._runs += 1
        return self._runs

    def load(self, argv: Sequence[str], port: int, tag: str) -> Server:
        log = self.logs / f"server-{self.next_run():03d}-{tag}.log"
        t0 = time.perf_counter()
        pid = self.reaper.spawn(argv, log)
        try:
            ready = wait_health(port, pid, log, self.cfg.timeout, t0)
        except BaseException:
            self.reaper.stop(pid)
            raise
        return Server(pid, port, log, ready)

    def serve(self, model: BenchModel, endpoints: Sequence[str] | None, settings: Settings, tag: str) -> Server:
        for attempt in range(3):
            port = self.port()
            try:
                return self.load(server_argv(self.toolchain, model, port, endpoints, settings, self.cfg.ctx), port, tag)
            except BenchError as exc:  # another process took the port between the check and the bind
                if ("couldn't bind" not in str(exc) and "HTTP server error" not in str(exc)) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def unload(self, server: Server) -> None:
        self.reaper.stop(server.pid)

    def query(self, server: Server, salt: int, cache_prompt: bool = False) -> Query:
        return stream_chat(
            server.port, make_prompt(self.cfg.prompt_tokens, salt), self.cfg.tokens, self.cfg.timeout, cache_prompt
        )

    # ---- rows

    def add_row(
        self,
        section: str,
        model: BenchModel,
        setup: str,
        k: int,
        link: str,
        settings: str,
        samples: dict[str, list[float]],
    ) -> dict[str, Any]:
        metrics = {name: s for name, vals in samples.items() if (s := summarize(vals)) is not None}
        if setup == "baseline" and section == "sharding":
            self.baselines[model.ref] = metrics
        row = {
            "section": section,
            "model": model.ref,
            "size_mib": model.size_mib,
            "setup": setup,
            "backends": k,
            "link": link,
            "settings": settings,
            "metrics": {n: asdict(s) for n, s in metrics.items()},
            "ratios": row_ratios(metrics, self.baselines.get(model.ref)),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        self.rows.append(row)
        self.say(_progress_line(row))
        return row

    @staticmethod
    def _take(samples: dict[str, list[float]], q: Query) -> None:
        for name in ("ttft_s", "prompt_tps", "gen_tps", "prompt_n", "gen_n"):
            value = getattr(q, name)
            if value is not None:
                samples.setdefault(name, []).append(value)

    def measure(
        self,
        model: BenchModel,
        backends: RpcBackends | None,
        k: int,
        settings: Settings,
        nocache: bool = False,
        queries: bool = True,
        rounds: Sequence[int] | None = None,
    ) -> dict[str, list[float]]:
        """Repeats of: cold load + query, warm load + query (and a load without -c when `nocache`)."""
        samples: dict[str, list[float]] = {}
        for r in range(self.cfg.repeats) if rounds is None else rounds:
            cache = self.work / f"rpc-cache-{self.next_run():03d}"
            endpoints = None
            if backends is not None:
                use_cache = cache if not settings.upstream else None
                endpoints = backends.start(k, settings.rpc_threads_for(k), use_cache)
            try:
                for phase in ("cold", "warm"):
                    server = self.serve(model, endpoints, settings, phase)
                    try:
                        samples.setdefault(f"load_{phase}_s", []).append(server.ready_s)
                        if queries:
                            self._take(samples, self.query(server, salt=r * 2 + (phase == "warm")))
                    finally:
                        self.unload(server)
                if nocache and backends is not None:
                    endpoints = backends.start(k, settings.rpc_threads_for(k), None)
                    server = self.serve(model, endpoints, settings, "nocache")
                    samples.setdefault("load_nocache_s", []).append(server.ready_s)
                    self.unload(server)
            finally:
                if backends is not None:
                    backends.stop()
                shutil.rmtree(cache, ignore_errors=True)
        return samples


def _progress_line(row: dict[str, Any]) -> str:
    m = row["metrics"]

    def g(name: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(m[name]["median"]) if name in m else "-"

    who = "baseline" if row["setup"] == "baseline" else f"rpc x{row['backends']} {row['link']}"
    return (
        f"  {row['section']:<11} {who:<18} {row['settings']:<26} cold {g('load_cold_s')}s warm {g('load_warm_s')}s "
        f"gen {g('gen_tps', '{:.1f}')} tok/s ttft {g('ttft_s', '{:.3f}')}s ready {g('ready_s')}s"
    )
