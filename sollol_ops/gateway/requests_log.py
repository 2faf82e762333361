"""The gateway's recent requests for its page (`/ui`): a bounded ring of what each model request did (model,
route, node, status, time to first token, tokens and tokens per second), those in flight included."""

from __future__ import annotations

import collections
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# The endpoints whose requests the page lists: the model routes and the page's own load/unload actions.
LISTED = {"chat", "generate", "embed", "embeddings", "chat.completions", "completions", "load", "unload"}
KEEP = 100  # requests kept, the oldest dropped first
TAIL_BYTES = 4096  # bytes of an answer's end kept to read its token count from
# Where each API states the tokens an answer generated: Ollama's final line, OpenAI's usage, llama-server's timings.
_TOKENS = re.compile(rb'"(?:eval_count|completion_tokens|predicted_n)"\s*:\s*(\d+)')


def tokens_from_tail(tail: bytes) -> int | None:
    """The generated token count an answer's last bytes state (the last one stated), or None."""
    found = _TOKENS.findall(tail)
    return int(found[-1]) if found else None


class Booked(Protocol):
    """What a request record reads from its call while the request runs (gateway/call.py's Call)."""

    model: str
    endpoint: str
    route: str
    node: str
    ttft: float | None


@dataclass
class RequestRecord:
    """One listed request: live while it runs (read from its call), fixed once it ended."""

    id: int
    started_at: float  # epoch seconds
    call: Booked | None
    model: str = "-"
    endpoint: str = ""
    route: str = "gateway"
    node: str = "gateway"
    status: int | None = None  # None while it runs
    ttft_s: float | None = None
    duration_s: float | None = None
    tokens: int | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        c = self.call
        live = c is not None and self.status is None
        ttft = c.ttft if live and c is not None else self.ttft_s
        tok_s = None
        if self.tokens and self.duration_s:  # over the generation (after the first token) when that is known
            span = self.duration_s - ttft if ttft is not None and self.duration_s - ttft > 0.001 else self.duration_s
            tok_s = round(self.tokens / span, 1)
        return {
            "id": self.id,
            "started_at": round(self.started_at, 3),
            "model": c.model if live and c is not None else self.model,
            "endpoint": c.endpoint if live and c is not None else self.endpoint,
            "route": c.route if live and c is not None else self.route,
            "node": c.node if live and c is not None else self.node,
            "state": "running" if self.status is None else ("failed" if self.status >= 400 or self.error else "done"),
            "status": self.status,
            "ttft_s": None if ttft is None else round(ttft, 3),
            "duration_s": round(time.time() - self.started_at, 3) if live else self.duration_s,
            "tokens": self.tokens,
            "tok_s": tok_s,
            "error": self.error,
        }


class RequestLog:
    """The last KEEP listed requests; listeners hear of every start and end (the page's event stream)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.records: collections.deque[RequestRecord] = collections.deque(maxlen=keep)
        self._ids = itertools.count(1)
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    def begin(self, call: Booked) -> RequestRecord | None:
        """A record for `call` when its endpoint is listed (None otherwise)."""
        if call.endpoint not in LISTED:
            return None
        record = RequestRecord(next(self._ids), time.time(), call, endpoint=call.endpoint)
        self.records.append(record)
        self._changed()
        return record

    def end(self, record: RequestRecord, status: int, duration: float, tokens: int | None, error: str) -> None:
        c = record.call
        if c is not None:
            record.model, record.route, record.node, record.ttft_s = c.model, c.route, c.node, c.ttft
        record.status, record.duration_s, record.tokens, record.error = status, round(duration, 3), tokens, error
        record.call = None
        self._changed()

    def to_json(self) -> list[dict[str, Any]]:
        """The newest first."""
        return [r.to_json() for r in reversed(self.records)]
