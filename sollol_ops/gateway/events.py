"""`GET /gateway/events`: the gateway's state pushed to its page as Server-Sent Events, one whole snapshot (the
JSON of `/gateway/status?cluster=1`) within a second of each change.

Bounded per client: no queue, only the version last sent. A slow client skips the snapshots it had no time
for and gets the newest one (changes coalesce); a client that leaves ends its stream (Relay cancels it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sollol_ops.gateway.call import Call
from sollol_ops.gateway.cluster_view import EVERY_S, ClusterView
from sollol_ops.gateway.upstream import STREAM_HEADERS, Relay

MIN_GAP_S = 0.25  # at most four snapshots a second per client
HEARTBEAT_S = 15.0  # a comment line when nothing changed, so proxies keep the connection


class Events:
    """Changes (`changed`, from every part the page shows) and the event streams that follow them."""

    def __init__(self, snapshot: Callable[[], Awaitable[dict[str, Any]]], view: ClusterView) -> None:
        self.snapshot = snapshot
        self.view = view
        self.version = 0
        self.clients = 0
        self.closed = False  # the gateway is stopping: every stream ends (an open page must not hold it up)
        self._event = asyncio.Event()
        self._built: tuple[int, bytes] | None = None

    def changed(self) -> None:
        """Something the page shows changed: wake the streams (cheap; callable from any event-loop callback)."""
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        """End every stream (the gateway stops); the pages show `reconnecting`."""
        self.closed = True
        self.changed()

    async def _encoded(self) -> tuple[int, bytes]:
        """The snapshot of the current version as one SSE event, built once for every client."""
        version = self.version
        if self._built is None or self._built[0] != version:
            data = json.dumps(await self.snapshot(), separators=(",", ":"))
            self._built = (version, f"event: status\nid: {version}\ndata: {data}\n\n".encode())
        return self._built

    async def frames(self) -> AsyncIterator[bytes]:
        """The stream of one client: a snapshot at once, then after each change (at most every MIN_GAP_S)."""
        sent = -1
        while not self.closed:
            event = self._event
            if self.version == sent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), HEARTBEAT_S)
                if self.closed:
                    return
                if self.version == sent:
                    yield b": idle\n\n"
                    continue
            sent, frame = await self._encoded()
            yield frame
            await asyncio.sleep(MIN_GAP_S)

    async def stream(self, request: Request, call: Call) -> Response:
        """`GET /gateway/events` (behind the API key, as every data endpoint)."""
        await self.view.refresh(max_age=EVERY_S)  # the first snapshot shows the cluster as it is
        self.clients += 1
        watching = self.view.watching()
        await watching.__aenter__()

        async def chunks() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            async for frame in self.frames():
                yield frame

        async def close(disconnected: bool) -> None:
            self.clients -= 1
            await watching.__aexit__(None, None, None)
            call.finish(200, " (the page left)" if disconnected else "")

        headers = {"Content-Type": "text/event-stream", **STREAM_HEADERS}
        return Relay(200, call.headers(headers), chunks(), close)
