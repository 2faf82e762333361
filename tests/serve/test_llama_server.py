"""sollol_ops.serve.command and server_http, the modules that start and talk to llama-server: its command lines, and a
real llama-server (plain, SmolLM2) through wait_ready, stream_chat, metrics and is_stalled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port

from sollol_ops import procs
from sollol_ops.cluster.toolchain import Toolchain, find_toolchain
from sollol_ops.errors import BenchError, UsageError
from sollol_ops.model.ollama import resolve_model
from sollol_ops.serve import command, server_http, server_proc
from sollol_ops.serve.command import StartOptions

FAKE = Toolchain(Path("/opt/x/rpc-server"), Path("/opt/x/llama-server"), None)


def test_plain_and_upstream_command_lines() -> None:
    opts = StartOptions(port=9000, n_ctx=512, threads=3, extra_args=["--batch-size", "64"])
    plain = command.command(FAKE, Path("/m.gguf"), opts)
    assert plain == [
        "/opt/x/llama-server", "--model", "/m.gguf", "--ctx-size", "512", "--threads", "3",
        "--host", "127.0.0.1", "--port", "9000", "--batch-size", "64",
    ]  # fmt: skip
    upstream = command.command(FAKE, Path("/m.gguf"), StartOptions(port=9000, n_ctx=512), rpc=["a:1", "b:2"])
    assert upstream[3:7] == ["--rpc", "a:1,b:2", "-ngl", "99"]
    assert "--tensor-split" not in upstream and "--threads" not in upstream


@pytest.mark.parametrize("arg", ["--host", "--host=0.0.0.0", "--port", "-ts", "--rpc", "-c", "--log-file"])
def test_server_args_that_sollol_sets_are_refused(arg: str) -> None:
    with pytest.raises(UsageError, match="conflicts with what sollol-ops sets itself"):
        command.check_extra_args(["--flash-attn", "on", arg])


def test_base_url_reaches_wildcard_binds_through_loopback() -> None:
    assert server_http.base_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert server_http.base_url("::", 8080) == "http://[::1]:8080"
    assert server_http.base_url("10.0.0.2", 1) == "http://10.0.0.2:1"


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Iterator[tuple[str, int, Path]]:
    blob = resolve_model("smollm2:135m", str(smollm2_store)).blob
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    argv = command.command(find_toolchain(), blob, StartOptions(port=port, n_ctx=512, extra_args=["--metrics"]))
    pid = procs.spawn_detached(argv, log)
    start = procs.process_start_time(pid)
    try:
        url = server_http.base_url("127.0.0.1", port)
        server_http.wait_ready(url, lambda: procs.is_alive(pid, start), log, timeout=120)
        yield url, pid, log
    finally:
        procs.stop_process(pid, start, timeout=5)


@pytest.mark.toolchain
@pytest.mark.model
def test_a_real_llama_server_streams_and_reports(plain_server: tuple[str, int, Path]) -> None:
    url, pid, _log = plain_server
    assert server_http.health(url) == 200
    tokens: list[str] = []
    result = server_http.stream_chat(
        url, [{"role": "user", "content": "Name a colour."}], 8, extra={"ignore_eos": True}, on_token=tokens.append
    )
    assert result.text and "".join(tokens) == result.text
    assert 0 < result.ttft_s <= result.total_s
    assert result.timings.get("predicted_n") == 8
    counters = server_http.metrics(url, timeout=5)
    assert counters is not None and counters["tokens_predicted_total"] >= 8
    assert counters["requests_processing"] == 0
    assert not server_http.is_stalled(url, window=1)  # idle: one read, no stall
    assert server_proc.blocked_on(pid, ["127.0.0.1:1"]) == []


@pytest.mark.toolchain
def test_wait_ready_names_the_error_when_the_server_dies(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    argv = command.command(find_toolchain(), tmp_path / "missing.gguf", StartOptions(port=free_port()))
    pid = procs.spawn_detached(argv, log)
    start = procs.process_start_time(pid)
    with pytest.raises(BenchError, match="llama-server exited while loading"):
        server_http.wait_ready(
            "http://127.0.0.1:1", lambda: procs.is_alive(pid, start), log, timeout=60, error=BenchError
        )


def test_health_speaks_http_and_tells_status_from_silence(tmp_path: Path) -> None:
    """health() is a bare GET over a socket: the status of a real HTTP server (200 and llama-server's 503
    while loading), None for a closed port or a peer that does not answer HTTP."""
    import http.server
    import socketserver
    import threading

    codes = iter([200, 503])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(next(codes) if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        url = server_http.base_url("127.0.0.1", httpd.server_address[1])
        try:
            assert server_http.health(url) == 200
            assert server_http.health(url) == 503
        finally:
            httpd.shutdown()
    assert server_http.health(server_http.base_url("127.0.0.1", free_port())) is None

    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.StreamRequestHandler) as junk:
        junk.RequestHandlerClass = type(
            "Junk",
            (socketserver.StreamRequestHandler,),
            {"handle": lambda self: self.wfile.write(b"\x00\x01 hello\r\n")},
        )
        thread = threading.Thread(target=junk.serve_forever, daemon=True)
        thread.start()
        try:
            assert server_http.health(server_http.base_url("127.0.0.1", junk.server_address[1])) is None
        finally:
            junk.shutdown()


def test_default_threads_leave_the_cores_to_rpc_servers_on_this_host() -> None:
    """One thread when an rpc-server of the plan runs here (loopback, an address of this host), else all cores."""
    import os
    import socket

    cores = max(1, os.cpu_count() or 1)
    assert command.default_threads(["127.0.0.1:50052"]) == command.COLOCATED_THREADS == 1
    assert command.default_threads(["[::1]:50052", "198.51.100.7:50052"]) == 1
    assert command.default_threads([f"{socket.gethostname()}:50052"]) == 1
    assert command.default_threads(["198.51.100.7:50052", "worker-b.invalid:50052"]) == cores
    assert command.default_threads([]) == cores
    # the coordinator's CPU keeps layers: it computes, sharing the cores with the rpc-servers on this host
    assert command.default_threads(["127.0.0.1:50052"], host_layers=4) == max(1, cores // 2)
    assert command.default_threads(["127.0.0.1:50052", "127.0.0.1:50053"], host_layers=4) == max(1, cores // 3)
    assert command.default_threads(["198.51.100.7:50052"], host_layers=4) == cores
    plain = command.command(FAKE, Path("/m.gguf"), StartOptions())
    assert plain[plain.index("--threads") + 1] == str(cores)  # the local-only baseline: all cores
