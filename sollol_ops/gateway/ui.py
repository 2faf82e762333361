"""`GET /ui`: the gateway's page (static files inside the package: no build step, nothing fetched from elsewhere),
and the one snapshot it shows: `/gateway/status` answers it (`?cluster=1` adds the cluster's view) and
`/gateway/events` pushes it.

The page itself is served without the API key (a browser opens it by its address); it asks for the key and sends
it as `Authorization: Bearer KEY` on every data call, which answer 401 without it, as all the others do."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sollol_ops import __version__
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.cluster_view import EVERY_S, ClusterView
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.ondemand import OnDemand
from sollol_ops.gateway.ondemand_status import Phase
from sollol_ops.gateway.requests_log import RequestLog
from sollol_ops.gateway.series import Series
from sollol_ops.gateway.status import GatewayStatus

FILES = {
    "ui.html": "text/html; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}
# Only the page's own files run or style it: no inline script, nothing from another origin, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_file(name: str) -> bytes:
    return (resources.files("sollol_ops.gateway") / "static" / name).read_bytes()


class Page:
    """The page's files and its snapshot: the gateway's status, the cluster's view, requests, charts, a load."""

    def __init__(
        self,
        status: GatewayStatus,
        shard: OnDemand | None,
        requests: RequestLog,
        series: Series,
        view: ClusterView,
        api_key: bool,
    ) -> None:
        self.status = status
        self.shard = shard
        self.requests = requests
        self.series = series
        self.view = view
        self.api_key = api_key
        self.started = time.monotonic()
        self.clients = lambda: 0  # the event streams open now (set by the app: Events.clients)

    def load(self) -> dict[str, Any] | None:
        """A load in progress: the shard's (phase, seconds, step, llama-server's last log line, bytes staged for
        it), or one `sollol-ops up` started (the coordinator's own progress); None when nothing loads."""
        view = self.view.view
        staged = view.get("staged") or []
        od = self.shard
        if od is not None and od.phase == Phase.LOADING and od.current:
            p = od.describe().progress
            elapsed, step, line, model = (
                time.monotonic() - od.load_t0,
                p.get("step", "starting"),
                p.get("log", ""),
                od.current,
            )
        else:
            c = view.get("coordinator") or {}
            if c.get("state") != "loading":
                return None
            p = c.get("progress") or {}
            elapsed, step, line, model = (
                p.get("elapsed_s", 0.0),
                "llama-server loading",
                p.get("log", ""),
                c.get("model"),
            )
        mine = [s for s in staged if s.get("model") == model]
        return {
            "model": model,
            "phase": "loading",
            "elapsed_s": round(elapsed, 1),
            "step": step,
            "log": line,
            "staged_bytes": sum(int(s.get("bytes") or 0) for s in mine) if mine else None,
            "sent_bytes": None,  # not measured: llama-server does not report it
        }

    def snapshot(self, cluster: bool) -> dict[str, Any]:
        out = self.status.status()
        out["pool"] = self.view.pool_nodes()  # describe() of each node, with its state
        out["gateway"] = {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "api_key": self.api_key,
            "pages": self.clients(),
        }
        out["requests"] = self.requests.to_json()
        out["series"] = self.series.to_json()
        out["load"] = self.load()
        if cluster:
            out["cluster"] = self.view.view
        return out

    async def streamed(self) -> dict[str, Any]:
        """What /gateway/events pushes (the view as the watch last read it)."""
        return self.snapshot(cluster=True)

    async def report(self, request: Request, call: Call) -> Response:
        """`GET /gateway/status`; `?cluster=1`: with the cluster read within the last second."""
        cluster = request.query_params.get("cluster", "") not in ("", "0", "false", "no")
        if cluster:
            await self.view.refresh(max_age=EVERY_S)
        body = self.snapshot(cluster)
        call.finish(200)
        return JSONResponse(body, headers=call.headers())

    async def page(self, request: Request, call: Call) -> Response:
        """`GET /ui` and `GET /ui/{name}` (ui.js, ui.css): the page's own files."""
        name = request.path_params.get("name", "ui.html")
        if name not in FILES:
            raise ApiError(404, f"/ui/{name} not found")
        call.finish(200)
        return Response(static_file(name), media_type=FILES[name], headers=call.headers(PAGE_HEADERS))
