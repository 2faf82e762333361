"""gateway/events.py without processes: a client that reads slowly gets the newest snapshot, never a backlog (one
snapshot built per version, whatever the number of changes), and closing ends every stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sollol_ops.gateway.cluster_view import ClusterView
from sollol_ops.gateway.events import Events
from sollol_ops.gateway.pool import Pool


def events() -> tuple[Events, list[int]]:
    built: list[int] = []
    holder: dict[str, Events] = {}

    async def snapshot() -> dict[str, Any]:
        built.append(holder["e"].version)
        return {"version": holder["e"].version}

    e = Events(snapshot, ClusterView(None, Pool([], None)))
    holder["e"] = e
    return e, built


def data(frame: bytes) -> dict[str, Any]:
    line = next(ln for ln in frame.decode().splitlines() if ln.startswith("data: "))
    return json.loads(line[6:])


def test_a_slow_client_skips_to_the_newest_snapshot() -> None:
    async def run() -> None:
        e, built = events()
        first, second = e.frames(), e.frames()
        assert data(await anext(first)) == {"version": 0} and data(await anext(second)) == {"version": 0}
        for _ in range(10_000):  # changes while neither client reads
            e.changed()
        assert data(await anext(first)) == {"version": 10_000}
        assert data(await anext(second)) == {"version": 10_000}
        assert built == [0, 10_000]  # built once per version sent, shared by the clients
        await first.aclose()
        await second.aclose()

    asyncio.run(run())


def test_close_ends_every_stream() -> None:
    async def run() -> None:
        e, _ = events()
        stream = e.frames()
        await anext(stream)
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.3)  # the stream now waits for a change
        e.close()
        try:
            await asyncio.wait_for(waiting, 5)
        except StopAsyncIteration:
            return
        raise AssertionError("the stream went on after close()")

    asyncio.run(run())
