"""Model management through the gateway, as Open WebUI's admin page and `ollama pull` expect: `POST /api/pull`
(streamed progress relayed as Ollama sends it), `DELETE /api/delete`, `POST /api/copy`, forwarded to the Ollama
of the node that should hold the model.

Where a pull goes (Ollama's pull names no size, and the registry is not asked):
1. the request's `X-Sollol-Pull-To` header: a pool node's name, or `coordinator`;
2. a model pinned to `shard` (sollol_gateway_pins) -> the coordinator's Ollama (`sollol_coordinator_ollama_url`,
   whose store the coordinator serves from); pinned to `pool` -> the pool;
3. a size the gateway knows (the request's `size` in bytes, a sollol-ops extension, or the size a pool node or
   the coordinator's store already lists for that name): the pool when an Ollama pool node with a declared
   `sollol_ollama_memory_mib` fits it, else the coordinator's Ollama;
4. otherwise (no size known): the coordinator's Ollama: no pool node is known to fit.
"The pool" is its usable Ollama nodes (an OpenAI-kind node cannot pull), the one with the most memory declared
first (no declaration counts as none), then the one holding the fewest models. Delete and copy go to every Ollama
that lists the model (the pool's and the coordinator's). After any of them the pool nodes involved are checked
again and the coordinator's store re-read, so the model is listed (/api/tags) and servable at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from starlette.requests import Request
from starlette.responses import Response

from sollol_ops.gateway.bodies import read_json
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.catalog import Catalog
from sollol_ops.gateway.errors import ApiError, upstream_message
from sollol_ops.gateway.pool import MIB, Node, Pool, normalize
from sollol_ops.gateway.routing import Router
from sollol_ops.gateway.upstream import NDJSON, STREAM_HEADERS, Relay

log = logging.getLogger("sollol_ops.gateway")

PULL_TO = "x-sollol-pull-to"
COORDINATOR = "coordinator"
URL_VAR = "sollol_coordinator_ollama_url"


@dataclass(frozen=True)
class Destination:
    """An Ollama to send a management request to: a pool node's, or the coordinator's (node None)."""

    name: str
    url: str
    node: Node | None = None


class ModelsAdmin:
    """/api/pull, /api/delete and /api/copy, forwarded to the Ollama(s) that hold or should hold the model."""

    def __init__(
        self, router: Router, pool: Pool, catalog: Catalog, http: Callable[[], httpx.AsyncClient], url: str = ""
    ) -> None:
        self.router = router
        self.pool = pool
        self.catalog = catalog
        self.http = http
        self.coordinator_url = url  # sollol_coordinator_ollama_url ("" : none)

    # ------------------------------------------------------------------ where

    def coordinator(self, why: str) -> Destination:
        if not self.coordinator_url:
            raise ApiError(
                501, f"{why}, and the inventory names no coordinator Ollama: set {URL_VAR} on the coordinator's host"
            )
        return Destination(COORDINATOR, self.coordinator_url)

    def pull_destination(self, name: str, size: int | None, to: str | None) -> Destination:
        """Where a pull of `name` goes (the rule in the module docstring)."""
        ollamas = [n for n in self.pool.nodes if n.api == "ollama"]
        if to:
            if to == COORDINATOR:
                return self.coordinator(f"{PULL_TO}: {to}")
            node = next((n for n in ollamas if n.name == to), None)
            if node is None:
                names = ", ".join(n.name for n in ollamas) or "none"
                raise ApiError(400, f"{PULL_TO}: {to!r} is no Ollama pool node (they are: {names}) nor {COORDINATOR}")
            return Destination(node.name, node.url, node)
        pin = self.router.pins.get(name)
        if pin == "shard":
            return self.coordinator(f"{name} is pinned to the shard")
        known = size or self._known_size(name)
        usable = [n for n in ollamas if n.usable()]
        if pin == "pool":
            fits = usable
        else:
            fits = [n for n in usable if n.spec.memory_mib and known and known <= n.spec.memory_mib * MIB]
        if fits:
            best = max(fits, key=lambda n: (n.spec.memory_mib or 0, -len(n.models)))
            return Destination(best.name, best.url, best)
        if pin == "pool":
            raise ApiError(503, f"{name} is pinned to the pool, and no Ollama pool node is usable now")
        why = "no pool node is known to fit it" + ("" if known else " (its size is not known before the pull)")
        return self.coordinator(f"{name}: {why}")

    def _known_size(self, name: str) -> int | None:
        for node in self.pool.nodes:
            if (size := node.size_of(name)) is not None:
                return size
        model = self.catalog.models().get(name)
        return model.size if model is not None else None

    def holders(self, name: str) -> list[Destination]:
        """The Ollamas that list `name`: Ollama pool nodes, and the coordinator's when its store has it."""
        out = [Destination(n.name, n.url, n) for n in self.pool.holders(name) if n.api == "ollama"]
        if self.coordinator_url and name in self.catalog.models():
            out.append(Destination(COORDINATOR, self.coordinator_url))
        return out

    async def refresh(self, dest: Destination) -> None:
        """What the gateway lists after a change: the node checked again, the coordinator's store re-read."""
        if dest.node is not None:
            await self.pool.check(self.http(), dest.node)
        self.catalog.refresh()

    # ------------------------------------------------------------------ routes

    async def pull(self, request: Request, call: Call) -> Response:
        body = await read_json(request, 1 << 20)
        name = _name(body, "model", "name")
        size = body.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ApiError(400, "size must be a positive number of bytes")
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be true or false")
        dest = self.pull_destination(normalize(name), size, request.headers.get(PULL_TO, "").strip() or None)
        call.model, call.route, call.node = normalize(name), "pool" if dest.node else "shard", dest.name
        forwarded = {k: v for k, v in body.items() if k != "size"}
        try:
            req = self.http().build_request("POST", f"{dest.url}/api/pull", json=forwarded)
            resp = await self.http().send(req, stream=True)
        except httpx.HTTPError as exc:
            raise ApiError(502, f"{dest.name}'s Ollama ({dest.url}) failed: {type(exc).__name__}") from None
        if resp.status_code >= 400:
            raw = await resp.aread()
            await resp.aclose()
            raise ApiError(resp.status_code, upstream_message(raw, resp.status_code), route=call.route, node=dest.name)
        log.info("pulling %s to %s (%s)", name, dest.name, dest.url)
        state = {"success": False, "error": ""}

        async def chunks() -> AsyncIterator[bytes]:
            buf, pending = b"", b""  # one chunk held back: the last one (`success`) goes out once it is listed
            try:
                async for chunk in resp.aiter_raw():
                    call.first_byte()
                    buf = _watch(buf + chunk, state)
                    if pending:
                        yield pending
                    pending = chunk
            except httpx.HTTPError as exc:
                state["error"] = f"{dest.name}'s Ollama broke off the pull: {type(exc).__name__}"
                pending += (json.dumps({"error": state["error"]}) + "\n").encode()
            _watch(buf + b"\n", state)
            if state["success"]:
                await self.refresh(dest)
            yield pending

        async def close(disconnected: bool) -> None:
            await resp.aclose()
            call.error = str(state["error"])
            call.finish(499 if disconnected else 200, " (client left)" if disconnected else "")

        ctype = resp.headers.get("content-type", "application/json")
        headers = call.headers({"Content-Type": ctype, **(STREAM_HEADERS if ctype.startswith(NDJSON) else {})})
        return Relay(200, headers, chunks(), close)

    async def delete(self, request: Request, call: Call) -> Response:
        body = await read_json(request, 1 << 20)
        name = normalize(_name(body, "model", "name"))
        return await self._each(call, name, "DELETE", "/api/delete", body)

    async def copy(self, request: Request, call: Call) -> Response:
        body = await read_json(request, 1 << 20)
        source = normalize(_name(body, "source"))
        _name(body, "destination")
        return await self._each(call, source, "POST", "/api/copy", body)

    async def _each(self, call: Call, name: str, method: str, path: str, body: dict[str, object]) -> Response:
        """`method path` on every Ollama that lists `name`; 404 when none does."""
        call.model = name
        dests = self.holders(name)
        if not dests:
            raise ApiError(404, f"model '{name}' not found")
        call.route = "pool" if all(d.node for d in dests) else "shard" if not any(d.node for d in dests) else "both"
        call.node = ",".join(d.name for d in dests)
        for dest in dests:
            try:
                resp = await self.http().request(method, f"{dest.url}{path}", json=body)
            except httpx.HTTPError as exc:
                raise ApiError(502, f"{dest.name}'s Ollama ({dest.url}) failed: {type(exc).__name__}") from None
            if resp.status_code >= 400:
                raise ApiError(resp.status_code, f"{dest.name}: {upstream_message(resp.content, resp.status_code)}")
            await self.refresh(dest)
        call.finish(200)
        return Response(status_code=200, headers=call.headers())


def _name(body: dict[str, object], *keys: str) -> str:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise ApiError(400, f"{keys[0]} is required (a model name)")


def _watch(buf: bytes, state: dict[str, object]) -> bytes:
    """Read the complete NDJSON lines of `buf` for the pull's outcome; the incomplete rest."""
    *lines, rest = buf.split(b"\n")
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("status") == "success":
            state["success"] = True
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            state["error"] = obj["error"]
    return rest
