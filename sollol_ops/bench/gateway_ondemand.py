"""The section "ondemand" of `bench --gateway` (issue 12): a gateway in shard mode loading on the first
request vs. `sollol-ops up` and the request by hand; a repeated and a new request; a swap of two models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sollol_ops import procs
from sollol_ops.bench.backends import LoopbackBackends
from sollol_ops.bench.base import make_prompt
from sollol_ops.bench.gateway_parts import Gateway, GatewayParts
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.streaming import OPENAI_CHAT, openai_body, stream, stream_client
from sollol_ops.dev.devstore import write_store
from sollol_ops.errors import BenchError
from sollol_ops.serve import server_http

SWAP_NAMES = ("gwbench:a", "gwbench:b")  # the measured model's GGUF under two names: two sharded models
# Goals of the issue: (operator, bound) on ratio = b / a.
GOAL_COLD = ("<=", 1.05)
GOAL_REPEAT = ("<=", 0.05)


def ondemand_section(bench: GatewayParts, model: BenchModel) -> None:
    k = max(bench.cfg.backends)
    cores = os.cpu_count() or 1
    store = bench.work / "gw-store"
    for name in SWAP_NAMES:
        write_store(store, name, model.blob, link="hardlink")
    loop = LoopbackBackends(bench.toolchain, bench.reaper, bench.logs, 30.0)
    endpoints = loop.start(k, max(1, cores // k), None)
    try:
        inv = bench.work / "shard.ini"
        hosts = [e.rsplit(":", 1) for e in endpoints]
        lines = [f"bench-{i} ansible_host={h} sollol_rpc_port={p}" for i, (h, p) in enumerate(hosts)]
        coord = ["", "[coordinator]", "localhost ansible_connection=local", ""]
        inv.write_text("\n".join(["[rpc_servers]", *lines, *coord]))
        # the ports of the gateway's coordinator and of `up`'s
        coord_port, up_port = procs.free_ports("127.0.0.1", 2, 21900 + os.getpid() % 500)
        gw = bench.gateway(
            "shard",
            inv,
            "--mode", "shard", "--ollama-models", str(store), "--keep-alive", "-1", "-c", str(bench.cfg.ctx),
            "--coordinator-port", str(coord_port), "--load-timeout", str(bench.cfg.timeout),
        )  # fmt: skip
        try:
            samples = _rounds(bench, gw, inv, store, up_port)
        finally:
            bench.reaper.stop(gw.pid)
            bench.down(inv, "gw-shard")  # a gateway that exits leaves its coordinator running
    finally:
        loop.stop()
    labels = {
        "cold": "gateway: first request (cold load)",
        "up": "`sollol-ops up` + the request by hand",
        "repeat": "gateway: the same request again",
        "new": "gateway: a new request (loaded)",
        "swap": "gateway: first request after a swap",
    }
    cold, ref_m = bench.add_row("ondemand", model, "gateway", labels["cold"], samples["cold"], None, backends=k)
    rows = {"cold": cold}
    for key in ("up", "repeat", "new", "swap"):
        setup = "by hand" if key == "up" else "gateway"
        rows[key], _ = bench.add_row("ondemand", model, setup, labels[key], samples[key], ref_m, backends=k)
    bench.add_comparison("ondemand", model, "TTFT of the first request", rows["up"], cold, "ttft_s", GOAL_COLD)
    bench.add_comparison("ondemand", model, "TTFT of a repeated request", cold, rows["repeat"], "ttft_s", GOAL_REPEAT)
    bench.add_comparison("ondemand", model, "TTFT of a new request", cold, rows["new"], "ttft_s", None)
    bench.add_comparison("ondemand", model, "swap vs. a cold load", cold, rows["swap"], "ttft_s", None)
    bench.section_notes["ondemand"] = [
        f"{k} loopback rpc-servers (`-t {max(1, cores // k)}`, no `-c` cache: every load sends the weights), "
        f"the model's GGUF under two store names ({' and '.join(SWAP_NAMES)}: two sharded models). The gateway "
        f"(`sollol-ops gateway --mode shard --keep-alive -1 -c {bench.cfg.ctx}`) runs all along, idle at the "
        "start of each repeat. Every request is a streamed OpenAI chat request with llama-server's default "
        f"prompt cache ({bench.cfg.prompt_tokens}-token prompt, {min(bench.cfg.tokens, 4)} tokens generated); "
        "TTFT is from the request sent to its first token. First request: nothing loaded, the gateway loads "
        "the model (the code of `sollol-ops up`, in the gateway's process). By hand: from starting "
        f"`sollol-ops up MODEL -c {bench.cfg.ctx}` (a new process) to the first token of a request of the same "
        "size sent to the coordinator once `up` returned, on the same rpc-servers (then `sollol-ops down`). "
        "The same request again / a new request: right after the first, on the loaded coordinator (the same "
        "prompt hits llama-server's prompt cache, a new one is processed whole). Swap: with the other name "
        "loaded and idle, from the request for this one to its first token; the gateway stops the loaded "
        "coordinator, then loads this one, so a swap is a stop plus a cold load, and two models asked in turn "
        "cost two such swaps where two cold loads are two first requests. Repeats alternate which name is "
        "loaded first (the first-request row holds cold loads of both) and whether the gateway or `up` goes "
        "first; the gateway unloads (`keep_alive: 0`) at the end of each."
    ]


def _rounds(bench: GatewayParts, gw: Gateway, inv: Path, store: Path, port: int) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {key: {} for key in ("cold", "up", "repeat", "new", "swap")}
    tokens = min(bench.cfg.tokens, 4)

    def body(name: str, salt: int) -> dict[str, Any]:
        return openai_body(name, make_prompt(bench.cfg.prompt_tokens, salt), tokens)

    def take(key: str, ttft: float) -> None:
        samples[key].setdefault("ttft_s", []).append(ttft)

    async def through_gateway(first: str, other: str) -> None:
        url = f"{gw.url}{OPENAI_CHAT}"
        async with stream_client(bench.cfg.timeout) as client:
            salt = bench.next_salt()
            take("cold", (await stream(client, url, body(first, salt), "openai")).ttft_s)
            take("repeat", (await stream(client, url, body(first, salt), "openai")).ttft_s)
            take("new", (await stream(client, url, body(first, bench.next_salt()), "openai")).ttft_s)
            take("swap", (await stream(client, url, body(other, bench.next_salt()), "openai")).ttft_s)
            r = await client.post(f"{gw.url}/api/generate", json={"model": other, "keep_alive": 0, "stream": False})
            if r.status_code != 200:
                raise BenchError(f"unloading {other} through the gateway: HTTP {r.status_code} {r.text[:200]}")
        bench.wait_idle(gw)

    async def by_hand(name: str) -> None:
        cli = [sys.executable, "-m", "sollol_ops.cli.main", "-i", str(inv)]
        argv = [*cli, "up", name, "--port", str(port), "-c", str(bench.cfg.ctx), "--ollama-models", str(store)]
        argv += ["--timeout", str(bench.cfg.timeout)]
        t0 = time.perf_counter()
        proc = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, env=bench.env("up"), timeout=bench.cfg.timeout
        )
        if proc.returncode != 0:
            raise BenchError(f"`sollol-ops up` failed in the bench: {proc.stderr.strip()[:300]}")
        try:
            async with stream_client(bench.cfg.timeout) as client:
                url = f"{server_http.base_url('127.0.0.1', port)}{OPENAI_CHAT}"
                t1 = time.perf_counter()
                s = await stream(client, url, body(name, bench.next_salt()), "openai")
            take("up", t1 - t0 + s.ttft_s)
        finally:
            bench.down(inv, "up")

    bench.wait_idle(gw)
    for r in range(bench.cfg.repeats):
        first, other = SWAP_NAMES if r % 2 == 0 else SWAP_NAMES[::-1]
        if r % 2 == 0:
            asyncio.run(through_gateway(first, other))
            asyncio.run(by_hand(first))
        else:
            asyncio.run(by_hand(first))
            asyncio.run(through_gateway(first, other))
    return samples
