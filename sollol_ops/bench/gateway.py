"""`sollol-ops bench --gateway`: what the gateway costs and buys, measured against the same parts without it
in one run (issues 11 and 12).

- section "gateway": time to first token and generation tokens/s through the gateway (`sollol-ops gateway
  --mode pool`, its own process, as a user starts it) vs. direct to the same llama-server, a pool member
  of the `openai` kind; through the gateway's OpenAI route (relayed as it is) and its Ollama /api/chat route
  (translated both ways). Requests interleaved route by route, one client.
- section "gateway-pool": a pool of 2 members vs. 1 under CLIENTS concurrent streamed clients, each member a
  llama-server with one thread pinned to its own core (taskset); aggregate generated tokens/s.
- section "ondemand": a gateway in shard mode over loopback rpc-servers: time to first token of the first
  request (the gateway loads the model: probes, placement, llama-server --rpc) vs. `sollol-ops up` + the
  same request sent by hand to the coordinator; the same request repeated and a new one on the loaded
  model; a swap (the other model loaded and idle, to the first token of this one).

Clients stream with httpx and time what they see: TTFT = request sent to the first chunk carrying content;
generation tokens/s = (tokens - 1) / (last content chunk - first content chunk), with the token count the
server reports at the end of the stream (llama-server's `timings.predicted_n`, relayed by the gateway's OpenAI
route; `eval_count` on its Ollama route), since a chunk may carry more than one token (an incomplete UTF-8
character is sent with the next one). Every process started here goes
through the Bench's Reaper."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from sollol_ops import procs
from sollol_ops.bench.backends import LoopbackBackends
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.runs import BenchBase, make_prompt
from sollol_ops.bench.settings import BenchConfig
from sollol_ops.bench.stats import Stat, row_ratios, summarize
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.dev.devstore import write_store
from sollol_ops.errors import BenchError
from sollol_ops.serve import command, server_http, server_log
from sollol_ops.serve.command import StartOptions

CLIENTS = 4  # concurrent clients of the pool comparison (issue 11)
SWAP_NAMES = ("gwbench:a", "gwbench:b")  # the measured model's GGUF under two names: two sharded models
OPENAI_CHAT = "/v1/chat/completions"
OLLAMA_CHAT = "/api/chat"

# Goals of the issues: (operator, bound) on ratio = b / a.
GOAL_TTFT = ("<=", 1.05)
GOAL_GEN = (">=", 0.98)
GOAL_POOL = (">=", 1.7)
GOAL_COLD = ("<=", 1.05)
GOAL_REPEAT = ("<=", 0.05)


@dataclass
class Streamed:
    """One streamed answer as its client saw it."""

    ttft_s: float
    total_s: float
    tokens: int  # generated tokens: the server's count, else the chunks carrying content
    gen_tps: float | None


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _piece(line: str, api: str, url: str) -> tuple[str, bool, int | None]:
    """(content, done, generated tokens the server reports here) of one line of an OpenAI SSE or Ollama
    NDJSON stream; BenchError on an error event."""
    text = line.strip()
    if api == "openai":
        if not text.startswith("data:"):
            return "", False, None
        text = text[5:].strip()
        if text == "[DONE]":
            return "", True, None
    elif not text:
        return "", False, None
    try:
        chunk = json.loads(text)
    except ValueError as exc:
        raise BenchError(f"{url} sent a line that is not JSON: {text[:120]!r}") from exc
    if not isinstance(chunk, dict):
        raise BenchError(f"{url} sent an unexpected line: {text[:120]!r}")
    if chunk.get("error"):
        raise BenchError(f"{url} broke off the answer: {json.dumps(chunk['error'])[:200]}")
    if api == "openai":
        content = "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
        return content, False, _count((chunk.get("timings") or {}).get("predicted_n"))
    done = bool(chunk.get("done"))
    return (chunk.get("message") or {}).get("content") or "", done, _count(chunk.get("eval_count")) if done else None


async def stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], api: str) -> Streamed:
    """POST one streamed chat request and time it as the client sees it."""
    t0 = time.perf_counter()
    first: float | None = None
    last = t0
    chunks = 0
    reported: int | None = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                detail = " ".join((await resp.aread()).decode(errors="replace").split())[:200]
                raise BenchError(f"POST {url}: HTTP {resp.status_code} {detail}")
            async for line in resp.aiter_lines():
                piece, done, count = _piece(line, api, url)
                if piece:
                    last = time.perf_counter()
                    first = last if first is None else first
                    chunks += 1
                reported = count if count is not None else reported
                if done:
                    break
    except httpx.HTTPError as exc:
        raise BenchError(f"POST {url} failed: {exc or type(exc).__name__}") from exc
    total = time.perf_counter() - t0
    if first is None:
        raise BenchError(f"POST {url} answered no tokens")
    tokens = reported or chunks
    gen_tps = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Streamed(first - t0, total, tokens, gen_tps)


def openai_body(model: str, prompt: str, tokens: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True}


def ollama_body(model: str, prompt: str, tokens: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": model, "messages": messages, "options": {"num_predict": tokens, "temperature": 0}, "stream": True}


def _client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))


def _threads(pid: int) -> list[int]:
    """The thread ids of process `pid` (0: only the calling thread, as sched_setaffinity reads 0)."""
    if pid == 0:
        return [0]
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


@contextlib.contextmanager
def _pinned(pids: Sequence[int], cores: set[int] | None) -> Iterator[None]:
    """Every thread of `pids` (0: the calling thread) on `cores` for the block, then back as they were
    (threads started meanwhile inherit it and keep it); None: leave them alone."""
    saved: list[tuple[int, set[int]]] = []
    if cores is not None:
        for tid in [t for pid in pids for t in _threads(pid)]:
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                saved.append((tid, os.sched_getaffinity(tid)))
                os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        for tid, before in saved:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)


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


class GatewayBench(BenchBase):
    """The gateway's sections of one bench run; rows, comparisons and notes as in the JSON document."""

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

    def _next_salt(self) -> int:
        self._salt += 1
        return self._salt

    def _env(self, name: str) -> dict[str, str]:
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
        pid, port = self.start(lambda p: [*cli, "--port", str(p), *args], log, self._env(f"gw-{name}"), 21800)
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

    # ---------------------------------------------------------------- issue 11

    def pool_sections(self, model: BenchModel) -> None:
        cores = os.cpu_count() or 1
        pin = shutil.which("taskset") is not None and cores >= 2
        a_pid, a_port = self.member(model, 0 if pin else None)
        b_pid, b_port = self.member(model, 1 if pin else None)
        inv1, inv2 = self.work / "pool-1.ini", self.work / "pool-2.ini"
        line = "m{0} ansible_host=127.0.0.1 sollol_ollama_port={1} sollol_ollama_api=openai"
        inv1.write_text(f"[ollama_nodes]\n{line.format(0, a_port)}\n")
        inv2.write_text(f"[ollama_nodes]\n{line.format(0, a_port)}\n{line.format(1, b_port)}\n")
        gw1 = self.gateway("pool-1", inv1, "--mode", "pool")
        gw2 = self.gateway("pool-2", inv2, "--mode", "pool")
        where = "pinned to core 0 and core 1 (taskset)" if pin else "not pinned (taskset missing or one core)"
        member = (
            f"each pool member a plain llama-server (`-t 1 -np {CLIENTS} --no-cache-prompt --ignore-eos`), "
            f"{where}; the gateway processes (`sollol-ops gateway --mode pool`, members of the `openai` kind) and "
            f"the clients share the machine's {cores} cores with them, unpinned"
        )
        try:
            # gateway vs. direct: the client (this thread) and the gateway on core 1, away from the member on
            # core 0, as a gateway runs on another machine than its pool nodes; both paths alike
            with _pinned([0, gw1.pid], {1} if pin else None):
                asyncio.run(self._overhead(model, a_port, gw1))
            asyncio.run(self._pool(model, gw1, gw2))
        finally:
            for pid in (gw1.pid, gw2.pid, a_pid, b_pid):
                self.reaper.stop(pid)
        self.section_notes["gateway"] = [
            f"{member}, except here: the client and the gateway run on core 1 ("
            + ("pinned" if pin else "not pinned: taskset missing or one core")
            + "), away from the member on core 0, as a gateway runs on another machine than its pool nodes (on "
            "a shared core, the gateway's own CPU time is taken from the member it relays). One client; per repeat "
            "one request on each route, the order rotating; one warm-up "
            "request per route first. Direct: the member's own `/v1/chat/completions`; through the gateway: the "
            "same body on its OpenAI route (relayed as it is) and the same request on its Ollama `/api/chat` route "
            "(translated to OpenAI upstream and back to NDJSON). Times as the client sees them: TTFT = request "
            "sent to the first chunk with content; GEN tok/s = (tokens - 1) / (last content chunk - first), tokens "
            "as the server counts them (greedy sampling, temperature 0, on every route)."
        ]
        self.section_notes["gateway-pool"] = [
            f"{member}. Per repeat, one batch on each gateway (order alternating): {CLIENTS} clients at once, each "
            f"a streamed `/v1/chat/completions` of {self.cfg.tokens} tokens after a {self.pool_prompt_tokens}-token "
            "prompt (a quarter of --prompt-tokens: the comparison is about generation); AGG tok/s = all generated "
            "tokens / wall time from the first request sent to the last token received (prompts included). The "
            "1-member pool uses the member on core 0; the 2-member pool adds the one on core 1. LOAD 1m: the host's "
            "load average when the row was finished (other work on the machine counts)."
        ]

    async def _overhead(self, model: BenchModel, port: int, gw: Gateway) -> None:
        direct = server_http.base_url("127.0.0.1", port)
        ref = model.resolved_ref
        routes = [
            ("direct", f"{direct}{OPENAI_CHAT}", "openai"),
            ("gateway-openai", f"{gw.url}{OPENAI_CHAT}", "openai"),
            ("gateway-ollama", f"{gw.url}{OLLAMA_CHAT}", "ollama"),
        ]
        samples: dict[str, dict[str, list[float]]] = {name: {} for name, _u, _a in routes}
        async with _client(self.cfg.timeout) as client:

            async def one(url: str, api: str) -> Streamed:
                prompt = make_prompt(self.cfg.prompt_tokens, self._next_salt())
                body = (openai_body if api == "openai" else ollama_body)(ref, prompt, self.cfg.tokens)
                return await stream(client, url, body, api)

            for _name, url, api in routes:  # warm-up: connections, the gateway's first request
                await one(url, api)
            for r in range(self.cfg.repeats):
                for i in range(len(routes)):
                    name, url, api = routes[(i + r) % len(routes)]
                    s = await one(url, api)
                    acc = samples[name]
                    acc.setdefault("ttft_s", []).append(s.ttft_s)
                    acc.setdefault("gen_n", []).append(s.tokens)
                    if s.gen_tps is not None:
                        acc.setdefault("gen_tps", []).append(s.gen_tps)
        labels = {
            "direct": "direct to llama-server (OpenAI)",
            "gateway-openai": "gateway, OpenAI /v1/chat/completions",
            "gateway-ollama": "gateway, Ollama /api/chat",
        }
        base, ref_m = self.add_row("gateway", model, "direct", labels["direct"], samples["direct"], None, members=1)
        for name in ("gateway-openai", "gateway-ollama"):
            row, _ = self.add_row("gateway", model, "gateway", labels[name], samples[name], ref_m, members=1)
            api = "OpenAI" if name.endswith("openai") else "Ollama"
            self.add_comparison(
                "gateway", model, f"TTFT through the gateway ({api} route)", base, row, "ttft_s", GOAL_TTFT
            )
            self.add_comparison("gateway", model, f"generation tok/s ({api} route)", base, row, "gen_tps", GOAL_GEN)

    async def _pool(self, model: BenchModel, gw1: Gateway, gw2: Gateway) -> None:
        samples: dict[int, dict[str, list[float]]] = {1: {}, 2: {}}
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.cfg.timeout, connect=10.0), limits=httpx.Limits(max_connections=4 * CLIENTS)
        ) as client:

            async def batch(gw: Gateway) -> tuple[float, int, list[Streamed]]:
                prompts = [make_prompt(self.pool_prompt_tokens, self._next_salt()) for _ in range(CLIENTS)]
                bodies = [openai_body(model.resolved_ref, p, self.cfg.tokens) for p in prompts]
                t0 = time.perf_counter()
                got = await asyncio.gather(*(stream(client, f"{gw.url}{OPENAI_CHAT}", b, "openai") for b in bodies))
                return time.perf_counter() - t0, sum(s.tokens for s in got), list(got)

            await batch(gw2)  # warm-up: the connections, each member's first requests
            for r in range(self.cfg.repeats):
                for k in (1, 2) if r % 2 == 0 else (2, 1):
                    wall, tokens, got = await batch(gw1 if k == 1 else gw2)
                    acc = samples[k]
                    acc.setdefault("agg_tps", []).append(tokens / wall)
                    acc.setdefault("wall_s", []).append(wall)
                    acc.setdefault("gen_n", []).append(tokens)
                    acc.setdefault("ttft_s", []).extend(s.ttft_s for s in got)
        one = f"pool of 1 member, {CLIENTS} concurrent clients"
        two = f"pool of 2 members, {CLIENTS} concurrent clients"
        a, ref_m = self.add_row("gateway-pool", model, "gateway", one, samples[1], None, members=1)
        b, _ = self.add_row("gateway-pool", model, "gateway", two, samples[2], ref_m, members=2)
        self.add_comparison("gateway-pool", model, f"aggregate tok/s, {CLIENTS} clients", a, b, "agg_tps", GOAL_POOL)

    # ---------------------------------------------------------------- issue 12

    def ondemand_section(self, model: BenchModel) -> None:
        k = max(self.cfg.backends)
        cores = os.cpu_count() or 1
        store = self.work / "gw-store"
        for name in SWAP_NAMES:
            write_store(store, name, model.blob, link="hardlink")
        loop = LoopbackBackends(self.toolchain, self.reaper, self.logs, 30.0)
        endpoints = loop.start(k, max(1, cores // k), None)
        try:
            inv = self.work / "shard.ini"
            hosts = [e.rsplit(":", 1) for e in endpoints]
            lines = [f"bench-{i} ansible_host={h} sollol_rpc_port={p}" for i, (h, p) in enumerate(hosts)]
            coord = ["", "[coordinator]", "localhost ansible_connection=local", ""]
            inv.write_text("\n".join(["[rpc_servers]", *lines, *coord]))
            # the ports of the gateway's coordinator and of `up`'s
            coord_port, up_port = procs.free_ports("127.0.0.1", 2, 21900 + os.getpid() % 500)
            gw = self.gateway(
                "shard",
                inv,
                "--mode", "shard", "--ollama-models", str(store), "--keep-alive", "-1", "-c", str(self.cfg.ctx),
                "--coordinator-port", str(coord_port), "--load-timeout", str(self.cfg.timeout),
            )  # fmt: skip
            try:
                samples = self._ondemand_rounds(gw, inv, store, up_port)
            finally:
                self.reaper.stop(gw.pid)
                self._down(inv, "gw-shard")  # a gateway that exits leaves its coordinator running
        finally:
            loop.stop()
        labels = {
            "cold": "gateway: first request (cold load)",
            "up": "`sollol-ops up` + the request by hand",
            "repeat": "gateway: the same request again",
            "new": "gateway: a new request (loaded)",
            "swap": "gateway: first request after a swap",
        }
        cold, ref_m = self.add_row("ondemand", model, "gateway", labels["cold"], samples["cold"], None, backends=k)
        rows = {"cold": cold}
        for key in ("up", "repeat", "new", "swap"):
            setup = "by hand" if key == "up" else "gateway"
            rows[key], _ = self.add_row("ondemand", model, setup, labels[key], samples[key], ref_m, backends=k)
        self.add_comparison("ondemand", model, "TTFT of the first request", rows["up"], cold, "ttft_s", GOAL_COLD)
        self.add_comparison(
            "ondemand", model, "TTFT of a repeated request", cold, rows["repeat"], "ttft_s", GOAL_REPEAT
        )
        self.add_comparison("ondemand", model, "TTFT of a new request", cold, rows["new"], "ttft_s", None)
        self.add_comparison("ondemand", model, "swap vs. a cold load", cold, rows["swap"], "ttft_s", None)
        self.section_notes["ondemand"] = [
            f"{k} loopback rpc-servers (`-t {max(1, cores // k)}`, no `-c` cache: every load sends the weights), "
            f"the model's GGUF under two store names ({' and '.join(SWAP_NAMES)}: two sharded models). The gateway "
            f"(`sollol-ops gateway --mode shard --keep-alive -1 -c {self.cfg.ctx}`) runs all along, idle at the "
            "start of each repeat. Every request is a streamed OpenAI chat request with llama-server's default "
            f"prompt cache ({self.cfg.prompt_tokens}-token prompt, {min(self.cfg.tokens, 4)} tokens generated); "
            "TTFT is from the request sent to its first token. First request: nothing loaded, the gateway loads "
            "the model (the code of `sollol-ops up`, in the gateway's process). By hand: from starting "
            f"`sollol-ops up MODEL -c {self.cfg.ctx}` (a new process) to the first token of a request of the same "
            "size sent to the coordinator once `up` returned, on the same rpc-servers (then `sollol-ops down`). "
            "The same request again / a new request: right after the first, on the loaded coordinator (the same "
            "prompt hits llama-server's prompt cache, a new one is processed whole). Swap: with the other name "
            "loaded and idle, from the request for this one to its first token; the gateway stops the loaded "
            "coordinator, then loads this one, so a swap is a stop plus a cold load, and two models asked in turn "
            "cost two such swaps where two cold loads are two first requests. Repeats alternate which name is "
            "loaded first (the first-request row holds cold loads of both) and whether the gateway or `up` goes "
            "first; the gateway unloads (`keep_alive: 0`) at the end of each."
        ]

    def _ondemand_rounds(self, gw: Gateway, inv: Path, store: Path, port: int) -> dict[str, dict[str, list[float]]]:
        samples: dict[str, dict[str, list[float]]] = {key: {} for key in ("cold", "up", "repeat", "new", "swap")}
        tokens = min(self.cfg.tokens, 4)

        def body(name: str, salt: int) -> dict[str, Any]:
            return openai_body(name, make_prompt(self.cfg.prompt_tokens, salt), tokens)

        def take(key: str, ttft: float) -> None:
            samples[key].setdefault("ttft_s", []).append(ttft)

        async def through_gateway(first: str, other: str) -> None:
            url = f"{gw.url}{OPENAI_CHAT}"
            async with _client(self.cfg.timeout) as client:
                salt = self._next_salt()
                take("cold", (await stream(client, url, body(first, salt), "openai")).ttft_s)
                take("repeat", (await stream(client, url, body(first, salt), "openai")).ttft_s)
                take("new", (await stream(client, url, body(first, self._next_salt()), "openai")).ttft_s)
                take("swap", (await stream(client, url, body(other, self._next_salt()), "openai")).ttft_s)
                r = await client.post(f"{gw.url}/api/generate", json={"model": other, "keep_alive": 0, "stream": False})
                if r.status_code != 200:
                    raise BenchError(f"unloading {other} through the gateway: HTTP {r.status_code} {r.text[:200]}")
            self._wait_idle(gw)

        async def by_hand(name: str) -> None:
            cli = [sys.executable, "-m", "sollol_ops.cli.main", "-i", str(inv)]
            argv = [*cli, "up", name, "--port", str(port), "-c", str(self.cfg.ctx), "--ollama-models", str(store)]
            argv += ["--timeout", str(self.cfg.timeout)]
            t0 = time.perf_counter()
            proc = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, env=self._env("up"), timeout=self.cfg.timeout
            )
            if proc.returncode != 0:
                raise BenchError(f"`sollol-ops up` failed in the bench: {proc.stderr.strip()[:300]}")
            try:
                async with _client(self.cfg.timeout) as client:
                    url = f"{server_http.base_url('127.0.0.1', port)}{OPENAI_CHAT}"
                    t1 = time.perf_counter()
                    s = await stream(client, url, body(name, self._next_salt()), "openai")
                take("up", t1 - t0 + s.ttft_s)
            finally:
                self._down(inv, "up")

        self._wait_idle(gw)
        for r in range(self.cfg.repeats):
            first, other = SWAP_NAMES if r % 2 == 0 else SWAP_NAMES[::-1]
            if r % 2 == 0:
                asyncio.run(through_gateway(first, other))
                asyncio.run(by_hand(first))
            else:
                asyncio.run(by_hand(first))
                asyncio.run(through_gateway(first, other))
        return samples

    def _wait_idle(self, gw: Gateway) -> None:
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

    def _down(self, inv: Path, env: str) -> None:
        cli = [sys.executable, "-m", "sollol_ops.cli.main", "-i", str(inv), "down"]
        subprocess.run(cli, capture_output=True, env=self._env(env), timeout=60, check=False)

    # ---------------------------------------------------------------- the whole part

    def run(self, models: Sequence[BenchModel]) -> None:
        if not models:
            return
        model = models[0]
        if len(models) > 1:
            self.notes.append(f"--gateway measures the first model only ({model.ref})")
        self.say(f"== gateway on {model.ref} ({model.size_mib:,.0f} MiB)")
        try:
            self.pool_sections(model)
            self.ondemand_section(model)
        finally:
            self.reaper.stop_all()
