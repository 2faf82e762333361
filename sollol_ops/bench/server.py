"""llama-server as the bench runs it: the command line of a row, waiting for /health, one streamed chat.

Everything here builds a llama-server command line, waits for /health or streams a chat request; nothing
else in sollol_ops.bench does."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sollol_ops import coordinator, procs, rpc
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.settings import Settings
from sollol_ops.coordinator import StartOptions
from sollol_ops.errors import BenchError
from sollol_ops.inventory import Backend
from sollol_ops.placement import build_slots, plan_placement
from sollol_ops.toolchain import Toolchain


def server_argv(
    toolchain: Toolchain, model: BenchModel, port: int, endpoints: Sequence[str] | None, settings: Settings, ctx: int
) -> list[str]:
    """One row's llama-server: plain (no endpoints), --rpc with upstream defaults, or sollol-ops' placement."""
    cores = os.cpu_count() or 1
    if not endpoints:  # the local-only baseline: plain llama-server
        argv = [str(toolchain.llama_server), "--model", str(model.blob), "--ctx-size", str(ctx)]
        argv += ["--threads", str(settings.server_threads or cores), "--host", "127.0.0.1", "--port", str(port)]
        return argv
    if settings.upstream:
        return upstream_argv(toolchain, model, port, endpoints, ctx)
    backends = []
    for i, endpoint in enumerate(endpoints):
        host, port_text = endpoint.rsplit(":", 1)
        backends.append(Backend(f"bench-{i}", host, int(port_text)))
    probes = list(zip(backends, rpc.probe_all(endpoints), strict=True))
    plan = plan_placement(model.info, build_slots(probes), ctx, model.resolved_ref)
    extra = ["--batch-size", str(settings.batch)] if settings.batch else []
    opts = StartOptions(
        port=port, n_ctx=ctx, threads=settings.server_threads, extra_args=extra, alias=model.resolved_ref
    )
    return coordinator.build_command(toolchain, model.blob, plan, opts)


def upstream_argv(toolchain: Toolchain, model: BenchModel, port: int, endpoints: Sequence[str], ctx: int) -> list[str]:
    """A raw `llama-server --rpc`: -ngl 99 and llama-server's own split, threads and batch size."""
    return [
        str(toolchain.llama_server), "--model", str(model.blob), "--rpc", ",".join(endpoints),
        "-ngl", "99", "--ctx-size", str(ctx), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


@dataclass
class Server:
    pid: int
    port: int
    log: Path
    ready_s: float


def wait_health(port: int, pid: int, log: Path, timeout: float, t0: float) -> float:
    """Seconds from t0 to /health answering 200; BenchError when the process dies or time runs out."""
    deadline = t0 + timeout
    while True:
        if not procs.is_alive(pid):
            raise BenchError(f"llama-server exited while loading: {coordinator.last_error(log)} (log {log})")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return time.perf_counter() - t0
            finally:
                conn.close()
        if time.perf_counter() > deadline:
            raise BenchError(f"llama-server not ready after {timeout:g}s: {coordinator.last_line(log)} (log {log})")
        time.sleep(0.02)


@dataclass
class Query:
    ttft_s: float
    total_s: float
    prompt_n: int
    prompt_tps: float | None
    gen_n: int
    gen_tps: float | None


def stream_chat(
    port: int, prompt: str, max_tokens: int, timeout: float, cache_prompt: bool = False, max_chunks: int = 100000
) -> Query:
    """One streamed chat completion: TTFT = first chunk carrying content; rates from `timings`."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "cache_prompt": cache_prompt,
        "ignore_eos": True,
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    ttft = None
    timings: dict[str, Any] = {}
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"chat completion answered HTTP {resp.status}: {resp.read(300)!r}")
        for count, raw in enumerate(resp):
            if count > max_chunks or time.perf_counter() - t0 > timeout:
                raise BenchError(f"chat completion did not finish within {timeout:g}s / {max_chunks} chunks")
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            obj = json.loads(payload)
            if ttft is None and any((c.get("delta") or {}).get("content") for c in obj.get("choices", [])):
                ttft = time.perf_counter() - t0
            if obj.get("timings"):
                timings = obj["timings"]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise BenchError(f"chat completion on port {port} failed: {exc}") from exc
    finally:
        conn.close()
    total = time.perf_counter() - t0
    return Query(
        ttft_s=ttft if ttft is not None else total,
        total_s=total,
        prompt_n=int(timings.get("prompt_n", 0)),
        prompt_tps=timings.get("prompt_per_second"),
        gen_n=int(timings.get("predicted_n", 0)),
        gen_tps=timings.get("predicted_per_second"),
    )
