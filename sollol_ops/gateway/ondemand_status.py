"""The on-demand shard's phases and the status snapshot it reports (`on_demand` in /gateway/status)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """Where the one sharded model stands (the values appear in /gateway/status and the logs)."""

    IDLE = "idle"
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"  # another model waits, or keep_alive expired: finish the requests in flight
    STOPPING = "stopping"


@dataclass(frozen=True)
class OnDemandStatus:
    """What OnDemand.describe() reports (`on_demand` in /gateway/status: to_json)."""

    model: str | None
    phase: Phase
    owned: bool
    endpoint: str | None
    pid: int | None
    in_flight: int
    queued: dict[str, int]
    keep_alive_s: float | None
    expires_in_s: float | None
    progress: dict[str, Any]
    degraded: bool
    skipped_backends: list[str]
    loads: int
    swaps: int
    unloads: int
    deaths: int
    last_error: str
    heals: int = 0  # degraded coordinators loaded again on the backends back (sollol_heal)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
