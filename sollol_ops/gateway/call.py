"""One request's book-keeping: its metrics, its one log line, the pool's accounting, its error answer."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import Response

from sollol_ops.gateway.errors import ApiError, body_for
from sollol_ops.gateway.metrics import Metrics
from sollol_ops.gateway.ondemand import Lease
from sollol_ops.gateway.pool import Pool
from sollol_ops.gateway.priority import Priority
from sollol_ops.gateway.requests_log import TAIL_BYTES, RequestLog, RequestRecord, tokens_from_tail
from sollol_ops.gateway.routing import Target

log = logging.getLogger("sollol_ops.gateway")


class Call:
    """Book-keeping of one request: metrics, the one log line, pool accounting."""

    def __init__(self, metrics: Metrics, pool: Pool, request: Request, endpoint: str) -> None:
        self.metrics = metrics
        self.pool = pool
        self.method = request.method
        self.path = request.url.path
        self.endpoint = endpoint
        self.t0 = time.perf_counter()
        self.model = "-"
        self.route = "gateway"
        self.node = "gateway"
        self.target: Target | None = None
        self.ttft: float | None = None
        self.error = ""
        self.done = False
        self.queued = False
        self.lease: Lease | None = None
        self.priority = Priority.INTERACTIVE  # on the sharded model's slots (gateway.priority)
        self.tokens: int | None = None  # generated, when the answer states it (set, or read from its tail)
        self.tail = b""
        self.book: RequestLog | None = None
        self.record: RequestRecord | None = None

    def list_in(self, book: RequestLog) -> None:
        """List this request among the recent ones (the page's), when its endpoint is one the page lists."""
        self.book, self.record = book, book.begin(self)

    def keep_tail(self, chunk: bytes) -> None:
        """Keep the answer's last bytes (a listed request's token count is read from them at the end)."""
        if self.record is not None:
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    def bind(self, target: Target) -> None:
        self.target = target
        self.route, self.node = target.route, target.node_name
        self.metrics.in_flight.labels(self.route, self.node).inc()
        self.metrics.queued.labels(self.route, self.node).inc()
        self.queued = True
        if target.node is not None:
            self.pool.acquire(target.node)

    def unbind(self) -> None:
        if self.target is None:
            return
        self.metrics.in_flight.labels(self.route, self.node).dec()
        if self.queued:
            self.metrics.queued.labels(self.route, self.node).dec()
            self.queued = False
        if self.target.node is not None:
            self.pool.release(self.target.node)
        self.target = None

    def first_byte(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.t0
            if self.queued:
                self.metrics.queued.labels(self.route, self.node).dec()
                self.queued = False

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"X-Sollol-Route": self.route, "X-Sollol-Node": self.node, **(extra or {})}

    def finish(self, status: int, note: str = "") -> None:
        if self.done:
            return
        self.done = True
        self.unbind()
        if self.lease is not None:
            self.lease.release(failed=status >= 500 or bool(self.error))
        total = time.perf_counter() - self.t0
        m = self.metrics
        m.requests.labels(self.endpoint, self.route, self.model, self.node, str(status)).inc()
        m.duration.labels(self.route, self.model, self.node).observe(total)
        if self.ttft is not None:
            m.ttft.labels(self.route, self.model, self.node).observe(self.ttft)
        if self.tokens is None and self.tail:
            self.tokens = tokens_from_tail(self.tail)
        if self.tokens:
            m.tokens.labels(self.route, self.model, self.node).inc(self.tokens)
        if self.book is not None and self.record is not None:
            self.book.end(self.record, status, total, self.tokens, self.error)
        detail = f" error={self.error!r}" if self.error else ""
        line = "%s %s %d route=%s node=%s model=%s %.3fs%s%s"
        args = (self.method, self.path, status, self.route, self.node, self.model, total, detail, note)
        (log.warning if status >= 400 or self.error else log.info)(line, *args)

    def left(self, note: str = " (client left)") -> Response:
        """The answer to a client that disconnected before it (499, for the log and the metrics)."""
        self.finish(499, note)
        return Response(status_code=499)

    def fail(self, api: str, exc: ApiError) -> Response:
        """`exc` answered in the API's error shape (Ollama's or OpenAI's)."""
        self.error = exc.message
        if exc.route != "gateway":
            self.route, self.node = exc.route, exc.node
        self.finish(exc.status)
        return Response(
            body_for(api, exc.status, exc.message),
            status_code=exc.status,
            media_type="application/json",
            headers=self.headers(exc.headers),
        )
