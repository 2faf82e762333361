"""The sections "gateway" (TTFT and tokens/s through the gateway vs. direct, on its OpenAI and Ollama routes)
and "gateway-pool" (a pool of 2 members vs. 1 under CLIENTS concurrent clients) of `bench --gateway` (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from sollol_ops.bench.base import make_prompt
from sollol_ops.bench.gateway_parts import CLIENTS, Gateway, GatewayParts
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.streaming import (
    OLLAMA_CHAT,
    OPENAI_CHAT,
    Streamed,
    ollama_body,
    openai_body,
    stream,
    stream_client,
)
from sollol_ops.serve import server_http

# Goals of the issue: (operator, bound) on ratio = b / a.
GOAL_TTFT = ("<=", 1.05)
GOAL_GEN = (">=", 0.98)
GOAL_POOL = (">=", 1.7)


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


def pool_sections(bench: GatewayParts, model: BenchModel) -> None:
    cores = os.cpu_count() or 1
    pin = shutil.which("taskset") is not None and cores >= 2
    a_pid, a_port = bench.member(model, 0 if pin else None)
    b_pid, b_port = bench.member(model, 1 if pin else None)
    inv1, inv2 = bench.work / "pool-1.ini", bench.work / "pool-2.ini"
    line = "m{0} ansible_host=127.0.0.1 sollol_ollama_port={1} sollol_ollama_api=openai"
    inv1.write_text(f"[ollama_nodes]\n{line.format(0, a_port)}\n")
    inv2.write_text(f"[ollama_nodes]\n{line.format(0, a_port)}\n{line.format(1, b_port)}\n")
    gw1 = bench.gateway("pool-1", inv1, "--mode", "pool")
    gw2 = bench.gateway("pool-2", inv2, "--mode", "pool")
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
            asyncio.run(_overhead(bench, model, a_port, gw1))
        asyncio.run(_pool(bench, model, gw1, gw2))
    finally:
        for pid in (gw1.pid, gw2.pid, a_pid, b_pid):
            bench.reaper.stop(pid)
    bench.section_notes["gateway"] = [
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
    bench.section_notes["gateway-pool"] = [
        f"{member}. Per repeat, one batch on each gateway (order alternating): {CLIENTS} clients at once, each "
        f"a streamed `/v1/chat/completions` of {bench.cfg.tokens} tokens after a {bench.pool_prompt_tokens}-token "
        "prompt (a quarter of --prompt-tokens: the comparison is about generation); AGG tok/s = all generated "
        "tokens / wall time from the first request sent to the last token received (prompts included). The "
        "1-member pool uses the member on core 0; the 2-member pool adds the one on core 1. LOAD 1m: the host's "
        "load average when the row was finished (other work on the machine counts)."
    ]


async def _overhead(bench: GatewayParts, model: BenchModel, port: int, gw: Gateway) -> None:
    direct = server_http.base_url("127.0.0.1", port)
    ref = model.resolved_ref
    routes = [
        ("direct", f"{direct}{OPENAI_CHAT}", "openai"),
        ("gateway-openai", f"{gw.url}{OPENAI_CHAT}", "openai"),
        ("gateway-ollama", f"{gw.url}{OLLAMA_CHAT}", "ollama"),
    ]
    samples: dict[str, dict[str, list[float]]] = {name: {} for name, _u, _a in routes}
    async with stream_client(bench.cfg.timeout) as client:

        async def one(url: str, api: str) -> Streamed:
            prompt = make_prompt(bench.cfg.prompt_tokens, bench.next_salt())
            body = (openai_body if api == "openai" else ollama_body)(ref, prompt, bench.cfg.tokens)
            return await stream(client, url, body, api)

        for _name, url, api in routes:  # warm-up: connections, the gateway's first request
            await one(url, api)
        for r in range(bench.cfg.repeats):
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
    base, ref_m = bench.add_row("gateway", model, "direct", labels["direct"], samples["direct"], None, members=1)
    for name in ("gateway-openai", "gateway-ollama"):
        row, _ = bench.add_row("gateway", model, "gateway", labels[name], samples[name], ref_m, members=1)
        api = "OpenAI" if name.endswith("openai") else "Ollama"
        bench.add_comparison(
            "gateway", model, f"TTFT through the gateway ({api} route)", base, row, "ttft_s", GOAL_TTFT
        )
        bench.add_comparison("gateway", model, f"generation tok/s ({api} route)", base, row, "gen_tps", GOAL_GEN)


async def _pool(bench: GatewayParts, model: BenchModel, gw1: Gateway, gw2: Gateway) -> None:
    samples: dict[int, dict[str, list[float]]] = {1: {}, 2: {}}
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(bench.cfg.timeout, connect=10.0), limits=httpx.Limits(max_connections=4 * CLIENTS)
    ) as client:

        async def batch(gw: Gateway) -> tuple[float, int, list[Streamed]]:
            prompts = [make_prompt(bench.pool_prompt_tokens, bench.next_salt()) for _ in range(CLIENTS)]
            bodies = [openai_body(model.resolved_ref, p, bench.cfg.tokens) for p in prompts]
            t0 = time.perf_counter()
            got = await asyncio.gather(*(stream(client, f"{gw.url}{OPENAI_CHAT}", b, "openai") for b in bodies))
            return time.perf_counter() - t0, sum(s.tokens for s in got), list(got)

        await batch(gw2)  # warm-up: the connections, each member's first requests
        for r in range(bench.cfg.repeats):
            for k in (1, 2) if r % 2 == 0 else (2, 1):
                wall, tokens, got = await batch(gw1 if k == 1 else gw2)
                acc = samples[k]
                acc.setdefault("agg_tps", []).append(tokens / wall)
                acc.setdefault("wall_s", []).append(wall)
                acc.setdefault("gen_n", []).append(tokens)
                acc.setdefault("ttft_s", []).extend(s.ttft_s for s in got)
    one = f"pool of 1 member, {CLIENTS} concurrent clients"
    two = f"pool of 2 members, {CLIENTS} concurrent clients"
    a, ref_m = bench.add_row("gateway-pool", model, "gateway", one, samples[1], None, members=1)
    b, _ = bench.add_row("gateway-pool", model, "gateway", two, samples[2], ref_m, members=2)
    bench.add_comparison("gateway-pool", model, f"aggregate tok/s, {CLIENTS} clients", a, b, "agg_tps", GOAL_POOL)
