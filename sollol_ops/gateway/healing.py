"""sollol_heal for the coordinator the gateway serves: on each watch tick, what serve/heal.py's Watch says should
be done with it (reload a degraded one on the backends that answer again, stop a stalled one), read in a
worker thread, under the gateway's --heal / --stall-timeout or else the inventory's sollol_heal /
sollol_stall_timeout. OnDemand acts on the verdict; this module only decides and keeps the record."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from sollol_ops.cluster.inventory import Cluster
from sollol_ops.errors import SollolError
from sollol_ops.serve import heal, incident
from sollol_ops.serve.coordinator import CoordinatorState

log = logging.getLogger("sollol_ops.gateway")
BY = "the gateway"


class Healer:
    def __init__(
        self,
        cluster: Callable[[], Cluster],
        mode: str | None = None,
        stall_timeout: float | None = None,
        root: Path | None = None,
    ) -> None:
        self.cluster = cluster
        self.mode = mode  # None: the inventory's sollol_heal
        self.stall_timeout = stall_timeout  # None: the inventory's sollol_stall_timeout
        self.root = root
        self.watch: heal.Watch | None = None
        self.checking = False
        self.heals = 0

    def _settings(self) -> tuple[str, float]:
        if self.mode is not None and self.stall_timeout is not None:
            return self.mode, self.stall_timeout
        try:
            cluster = self.cluster()
        except SollolError as exc:  # an inventory that cannot be read: do nothing rather than guess
            log.warning("healing is off until the inventory reads again: %s", exc)
            return heal.MANUAL, 0.0
        mode = self.mode if self.mode is not None else cluster.heal
        return mode, self.stall_timeout if self.stall_timeout is not None else cluster.stall_timeout

    async def verdict(self, state: CoordinatorState, idle: bool) -> heal.Verdict | None:
        """What to do with the coordinator now (None: nothing, or sollol_heal is manual). ``idle``: no request
        of the gateway's in flight or queued, and the coordinator is the gateway's own (a reload starts it with
        the gateway's options)."""
        if self.checking:
            return None
        mode, timeout = self._settings()
        if mode != heal.AUTO:
            return None
        if self.watch is None or self.watch.stall_timeout != timeout:
            self.watch = heal.Watch(timeout)
        self.checking = True
        try:
            return await asyncio.to_thread(self.watch.check, state, idle)
        finally:
            self.checking = False

    async def record(self, verdict: heal.Verdict, state: CoordinatorState, in_flight: int) -> None:
        """Log what is done and keep it as the last incident (`sollol-ops status` shows it)."""
        if verdict.action is heal.Action.STOP:
            kind = incident.IncidentKind.STALLED
            what = "%s; %d request(s) in flight get an error; the next request starts it again"
            log.warning(what, verdict.message, in_flight)
        else:
            self.heals += 1
            kind = incident.IncidentKind.HEALED
            log.warning("healing %s: %s; starting it again on them", state.model, verdict.message)
        await asyncio.to_thread(heal.note, kind, state.model, verdict.message, BY, self.root, verdict.backends)
