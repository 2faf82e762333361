"""llama-server as the bench runs it: the command line of a row, waiting for /health, one streamed chat,
all through sollol_ops.serve.command (the one llama-server command line), serve.server_http (the one HTTP client
of llama-server) and lifecycle.plan_command (the same resolve -> probe -> plan -> command path as `sollol-ops up`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sollol_ops import procs
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.settings import Settings
from sollol_ops.cluster.inventory import Backend, Coordinator
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import BenchError, SollolError
from sollol_ops.serve import command, lifecycle, server_http
from sollol_ops.serve.command import StartOptions


def server_argv(
    toolchain: Toolchain, model: BenchModel, port: int, endpoints: Sequence[str] | None, settings: Settings, ctx: int
) -> list[str]:
    """One row's llama-server: plain (no endpoints), --rpc with upstream defaults, or sollol-ops' placement."""
    if not endpoints:  # the local-only baseline: plain llama-server
        return command.command(
            toolchain, model.blob, StartOptions(port=port, n_ctx=ctx, threads=settings.server_threads)
        )
    if settings.upstream:
        return upstream_argv(toolchain, model, port, endpoints, ctx)
    backends = []
    for i, endpoint in enumerate(endpoints):
        host, port_text = endpoint.rsplit(":", 1)
        backends.append(Backend(f"bench-{i}", host, int(port_text), memory_mib=settings.backend_mib))
    extra = ["--batch-size", str(settings.batch)] if settings.batch else []
    opts = StartOptions(
        port=port, n_ctx=ctx, threads=settings.server_threads, extra_args=extra, alias=model.resolved_ref
    )
    coordinator = Coordinator("bench", "127.0.0.1", settings.coordinator_mib) if settings.coordinator_mib else None
    return lifecycle.plan_command(
        model.resolved_ref, model.blob, model.info, backends, opts, toolchain, coordinator=coordinator
    ).command


def upstream_argv(toolchain: Toolchain, model: BenchModel, port: int, endpoints: Sequence[str], ctx: int) -> list[str]:
    """A raw `llama-server --rpc`: -ngl 99 and llama-server's own split, threads and batch size."""
    return command.command(toolchain, model.blob, StartOptions(port=port, n_ctx=ctx), rpc=endpoints)


@dataclass
class Server:
    pid: int
    port: int
    log: Path
    ready_s: float


def wait_health(port: int, pid: int, log: Path, timeout: float, t0: float) -> float:
    """Seconds from t0 (perf_counter at spawn) to /health answering 200; BenchError when the process
    dies or time runs out."""
    return server_http.wait_ready(
        server_http.base_url("127.0.0.1", port),
        lambda: procs.is_alive(pid),
        log,
        timeout,
        started=t0,
        poll=0.02,
        error=BenchError,
        hint=f"log {log}",
    )


@dataclass
class Query:
    ttft_s: float
    total_s: float
    prompt_n: int
    prompt_tps: float | None
    gen_n: int
    gen_tps: float | None


def stream_chat(port: int, prompt: str, max_tokens: int, timeout: float, cache_prompt: bool = False) -> Query:
    """One streamed chat completion: TTFT = first chunk carrying content; rates from `timings`."""
    try:
        result = server_http.stream_chat(
            server_http.base_url("127.0.0.1", port),
            [{"role": "user", "content": prompt}],
            max_tokens,
            stall_timeout=timeout,
            extra={"cache_prompt": cache_prompt, "ignore_eos": True},
            deadline_s=timeout,
        )
    except SollolError as exc:
        raise BenchError(str(exc)) from exc
    timings = result.timings
    return Query(
        ttft_s=result.ttft_s,
        total_s=result.total_s,
        prompt_n=int(timings.get("prompt_n", 0)),
        prompt_tps=timings.get("prompt_per_second"),
        gen_n=int(timings.get("predicted_n", 0)),
        gen_tps=timings.get("predicted_per_second"),
    )
