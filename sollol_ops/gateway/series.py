"""The gateway's own counters over the last minutes, for its page's charts: tokens per second, requests in
flight and requests per second, sampled once a second from its Prometheus metrics into a bounded ring."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from sollol_ops.gateway.metrics import Metrics

EVERY_S = 1.0
KEEP = 300  # samples: five minutes at one a second


def total(metric: MetricWrapperBase) -> float:
    """A metric's value summed over its labels (a counter's `_total` samples, a gauge's own)."""
    out = 0.0
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_total") or s.name == family.name:
                out += s.value
    return out


class Series:
    """One sample a second: (epoch seconds, tokens/s, in flight, requests/s), the last KEEP of them."""

    def __init__(self, metrics: Metrics, keep: int = KEEP) -> None:
        self.metrics = metrics
        self.samples: collections.deque[tuple[float, float, float, float]] = collections.deque(maxlen=keep)
        self._last: tuple[float, float, float] | None = None  # (monotonic, tokens, requests) at the last sample
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def sample(self) -> None:
        now = time.monotonic()
        tokens, requests = total(self.metrics.tokens), total(self.metrics.requests)
        in_flight = total(self.metrics.in_flight)
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            tok_s, req_s = (tokens - self._last[1]) / dt, (requests - self._last[2]) / dt
            self.samples.append((round(time.time(), 2), round(tok_s, 2), in_flight, round(req_s, 3)))
        self._last = (now, tokens, requests)
        for callback in self._listeners:
            callback()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(EVERY_S)

    def to_json(self) -> dict[str, Any]:
        cols = list(zip(*self.samples, strict=True)) if self.samples else [(), (), (), ()]
        return {"every_s": EVERY_S, "t": cols[0], "tok_s": cols[1], "in_flight": cols[2], "req_s": cols[3]}
