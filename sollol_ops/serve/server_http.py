"""The one module that speaks HTTP to llama-server (outside the gateway, which relays through httpx):
`/health` and waiting for it, streamed chat completions (SSE: TTFT, `timings`, stall time-out), and its
Prometheus counters (`/metrics`).

One code path, on the standard library: `/health` is a bare GET over a socket, every other request goes
through http.client, imported when first needed. Measured on the 2-core dev VM (`python -X importtime`):
httpx costs 120-260 ms of imports and prometheus_client.parser 54 ms, against ~95 ms for the whole
`sollol_ops.cli.main` and ~3 ms for socket (http.client 20-45 ms); a /health round trip is ~0.4 ms over
the socket or http.client and ~24 ms through httpx.get. `up` polls /health every 20 ms while llama-server
loads, so the libraries would only add start-up time; llama-server's `/metrics` is flat
`llamacpp:NAME VALUE` lines, read without a parser (docs/cli.md, "How sollol-ops talks to llama-server").
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops.errors import CoordinatorError, SollolError
from sollol_ops.serve.server_log import last_error, last_line


def base_url(host: str, port: int) -> str:
    """Where to connect to a llama-server listening on host:port (0.0.0.0 / :: are reached via loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _split(url: str) -> tuple[str, int]:
    hostport = url.removeprefix("http://")
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def health(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of /health (200 ready, 503 loading), None when nothing answers. A bare GET over a
    socket: `up` polls this while llama-server loads, and http.client/urllib would cost the command
    ~25 ms of imports before it can start anything."""
    host, port = _split(url)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"GET /health HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
    head = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            while b"\r\n" not in head and len(head) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except (OSError, ValueError):
        return None
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def wait_ready(
    url: str,
    alive: Callable[[], bool],
    log: Path,
    timeout: float = 600.0,
    on_progress: Callable[[float, str], None] | None = None,
    started: float | None = None,
    poll: float = 0.02,
    error: type[SollolError] = CoordinatorError,
    hint: str = "see `sollol-ops logs`",
) -> float:
    """Poll /health until 200; seconds since ``started`` (a perf_counter reading, default now). Raises
    ``error`` with the log's last error when the process dies, or its last line on time-out.

    The poll is tight (20 ms, a connect that is refused or a 503 costs well under a millisecond) so
    that readiness is noticed when it happens; the log is read for ``on_progress`` at most every
    PROGRESS_EVERY seconds, as a -lv 4 log is long and re-reading it each poll would compete with the
    load for the CPU."""
    t0 = time.perf_counter() if started is None else started
    shown = float("-inf")
    while True:
        elapsed = time.perf_counter() - t0
        if not alive():
            raise error(f"llama-server exited while loading: {last_error(log)} ({hint})")
        if health(url, timeout=1.0) == 200:
            return time.perf_counter() - t0
        if elapsed > timeout:
            raise error(f"llama-server not ready after {timeout:g}s ({hint}); last: {last_line(log)}")
        if on_progress is not None and elapsed - shown >= PROGRESS_EVERY:
            shown = elapsed
            on_progress(elapsed, last_line(log))
        time.sleep(poll)


PROGRESS_EVERY = 0.25


class Stalled(CoordinatorError):
    """A streamed request made no progress for the stall time-out (llama.cpp's RPC client never times out).
    The coordinator raises it again with a message naming the backend it waits on."""


@dataclass
class ChatResult:
    text: str
    ttft_s: float  # to the first chunk carrying content (total_s when none did)
    total_s: float
    timings: dict[str, Any] = field(default_factory=dict)  # llama-server's `timings` of the last chunk


def stream_chat(
    url: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    stall_timeout: float = 120.0,
    extra: dict[str, Any] | None = None,
    on_token: Callable[[str], None] | None = None,
    deadline_s: float | None = None,
) -> ChatResult:
    """One streamed OpenAI chat completion. Each read waits at most ``stall_timeout`` (then Stalled);
    ``deadline_s`` bounds the whole request; a stream that ends before `[DONE]` is an error."""
    import http.client  # not at module level: `up` never needs it (see health)

    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True, **(extra or {})}
    host, port = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=stall_timeout)
    parts: list[str] = []
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    ttft = None
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            detail = " ".join(resp.read(4096).decode(errors="replace").split())[:200]
            raise CoordinatorError(f"chat completion at {url} failed: HTTP {resp.status} {detail}")
        while True:
            if deadline_s is not None and time.perf_counter() - t0 > deadline_s:
                raise CoordinatorError(f"chat completion at {url} did not finish within {deadline_s:g}s")
            line = resp.readline(1 << 20)
            if not line:
                raise CoordinatorError(
                    f"llama-server at {url} ended the answer before its end (did it die? `sollol-ops status`, "
                    "`sollol-ops logs`)"
                )
            text = line.decode(errors="replace").strip()
            if not text.startswith("data:"):
                continue
            payload = text[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(piece)
                    if on_token is not None:
                        on_token(piece)
            if chunk.get("timings"):
                timings = chunk["timings"]
    except TimeoutError as exc:
        raise Stalled(f"llama-server at {url} sent nothing for {stall_timeout:g}s") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise CoordinatorError(f"chat completion at {url} failed: {reason}") from exc
    finally:
        conn.close()
    total = time.perf_counter() - t0
    return ChatResult("".join(parts), ttft if ttft is not None else total, total, timings)


# --------------------------------------------------------------------------- a running llama-server


def metrics(url: str, timeout: float) -> dict[str, float] | None:
    """llama-server's Prometheus counters (`--metrics`), or None when they cannot be read."""
    import http.client  # not at module level: `up` never needs it (see health)

    host, port = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        text = resp.read(1 << 20).decode(errors="replace")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("llamacpp:"):
            with contextlib.suppress(ValueError):
                values[name[9:]] = float(value)
    return values


# llama-server's counters of speculative decoding (tools/server/server-task.cpp, to_metrics), added up when
# each request ends: draft tokens generated, and those the target accepted.
DRAFTED = "spec_decode_num_draft_tokens_total"
ACCEPTED = "spec_decode_num_accepted_tokens_total"


def draft_counters(url: str, timeout: float = 2.0) -> tuple[int, int] | None:
    """(drafted, accepted) tokens since llama-server started, from its /metrics; None when unreadable."""
    values = metrics(url, timeout)
    if not values or DRAFTED not in values:
        return None
    return int(values[DRAFTED]), int(values.get(ACCEPTED, 0))


def is_stalled(url: str, window: float, poll: float = 0.25) -> bool:
    """True when requests are in flight but llama-server completes no model step (its `n_decode_total`
    counter stands still) for ``window`` seconds. Returns as soon as a step completes, so a busy,
    progressing server costs one or two polls; an idle one costs a single read."""
    first = metrics(url, timeout=min(window, 5.0))
    if not first or first.get("requests_processing", 0) <= 0:
        return False
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        time.sleep(poll)
        now = metrics(url, timeout=min(window, 5.0))
        if now is None:
            continue
        if now.get("requests_processing", 0) <= 0 or now.get("n_decode_total") != first.get("n_decode_total"):
            return False
    return True
