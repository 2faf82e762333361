"""The pool: nodes of the inventory group `ollama_nodes`, each an Ollama server (`sollol_ollama_api=ollama`)
or an OpenAI-compatible one (`openai`: llama-server, vLLM). Per node: what it serves and has loaded (from
its own listing), active health checks with exponential back-off, a circuit breaker, and the count of
requests outstanding on it. The choice among the nodes that have a model: loaded first, then least
outstanding, then least recently chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from sollol_ops.errors import UsageError
from sollol_ops.gateway.settings import PoolNode
from sollol_ops.model.names import parse_model_ref

log = logging.getLogger("sollol_ops.gateway")

MIB = 1 << 20


def normalize(name: str) -> str:
    """An Ollama model name in its short canonical form (`smollm2` -> `smollm2:latest`); other names as given."""
    try:
        return str(parse_model_ref(name))
    except UsageError:
        return name


@dataclass
class PoolSettings:
    health_interval: float = 5.0  # seconds between checks of a healthy node
    backoff_start: float = 0.5  # first re-check after a failure; doubles up to backoff_max
    backoff_max: float = 30.0
    check_timeout: float = 2.0
    breaker_failures: int = 3  # consecutive failures (requests or checks) that open the breaker
    breaker_cooldown: float = 30.0  # seconds open before a successful check may close it again


@dataclass
class Node:
    spec: PoolNode
    healthy: bool = False
    checked: bool = False
    outstanding: int = 0
    failures: int = 0
    breaker_open: bool = False
    opened_at: float = 0.0
    backoff: float = 0.0
    next_check: float = 0.0
    last_error: str = ""
    last_chosen: float = 0.0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # normalized name -> Ollama /api/tags entry
    loaded: dict[str, dict[str, Any]] = field(default_factory=dict)  # normalized name -> Ollama /api/ps entry

    @property
    def name(self) -> str:
        return self.spec.host

    @property
    def api(self) -> str:
        return self.spec.api

    @property
    def url(self) -> str:
        return self.spec.url

    def usable(self) -> bool:
        return self.healthy and not self.breaker_open

    def size_of(self, model: str) -> int | None:
        entry = self.loaded.get(model) or self.models.get(model) or {}
        size = entry.get("size")
        return int(size) if isinstance(size, int | float) and size > 0 else None

    def fits(self, model: str, size: int | None) -> bool:
        """A node with a declared memory cap takes a model only when its real size fits under it; without
        a cap, a model the node lists is taken to fit (it is the node's own model)."""
        cap = self.spec.memory_mib
        if cap is None:
            return True
        size = size or self.size_of(model)
        return size is not None and size <= cap * MIB

    def describe(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "url": self.url,
            "api": self.api,
            "healthy": self.healthy,
            "breaker": "open" if self.breaker_open else "closed",
            "failures": self.failures,
            "outstanding": self.outstanding,
            "last_error": self.last_error,
            "models": sorted(self.models),
            "loaded": sorted(self.loaded),
        }


# Names taken from one /v1/models entry (llama-server's --alias a,b,...): a peer cannot flood the catalog.
MAX_ALIASES = 64


def _openai_listing(data: Any) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """An OpenAI /v1/models answer as Ollama tags and ps entries (llama-server adds `meta` with sizes), one per
    name the model answers to: its id and the `aliases` llama-server lists (`--alias a,b`)."""
    models: dict[str, dict[str, Any]] = {}
    loaded: dict[str, dict[str, Any]] = {}
    for item in (data or {}).get("data") or []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        meta = item.get("meta") if isinstance(item.get("meta"), dict) else {}
        aliases = item.get("aliases") if isinstance(item.get("aliases"), list) else []
        names = [item["id"], *(a for a in aliases[:MAX_ALIASES] if isinstance(a, str) and a)]
        details = {
            "format": "gguf",
            "family": "",
            "families": None,
            "parameter_size": _param_size(meta.get("n_params")),
            "quantization_level": str(meta.get("ftype") or ""),
        }
        size, n_ctx = _count(meta.get("size")), _count(meta.get("n_ctx"))
        for name in dict.fromkeys(normalize(n) for n in names):
            entry = {
                "name": name,
                "model": name,
                "modified_at": "1970-01-01T00:00:00Z",
                "size": size,
                "digest": "",
                "details": details,
            }
            models[name] = entry
            loaded[name] = {
                **{k: entry[k] for k in ("name", "model", "size", "digest", "details")},
                "size_vram": 0,
                "expires_at": "9999-12-31T23:59:59Z",
                "context_length": n_ctx,
            }
    return models, loaded


def _count(value: Any) -> int:
    """A size or count from a peer's JSON: a finite number as an int, anything else (NaN, Infinity: json reads
    them) 0."""
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else 0


def _param_size(n: Any) -> str:
    from sollol_ops.gateway.translate import parameter_size

    return parameter_size(int(n)) if isinstance(n, int | float) and n > 0 else ""


def _ollama_listing(data: Any, key: str = "models") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in (data or {}).get(key) or []:
        if isinstance(item, dict) and isinstance(item.get("model") or item.get("name"), str):
            out[normalize(item.get("model") or item["name"])] = item
    return out


class Pool:
    def __init__(
        self,
        specs: list[PoolNode],
        settings: PoolSettings | None = None,
        on_change: Callable[[Node], None] | None = None,
    ) -> None:
        self.settings = settings or PoolSettings()
        self.nodes = [Node(s) for s in specs]
        self.on_change = on_change or (lambda node: None)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ health

    async def check(self, client: httpx.AsyncClient, node: Node) -> bool:
        t = self.settings.check_timeout
        try:
            if node.api == "ollama":
                tags = await client.get(f"{node.url}/api/tags", timeout=t)
                tags.raise_for_status()
                ps = await client.get(f"{node.url}/api/ps", timeout=t)
                models = _ollama_listing(tags.json())
                loaded = _ollama_listing(ps.json()) if ps.status_code == 200 else {}
            else:
                health = await client.get(f"{node.url}/health", timeout=t)
                if health.status_code not in (200, 404):  # 503: still loading
                    raise httpx.HTTPStatusError(
                        f"/health answered {health.status_code}", request=health.request, response=health
                    )
                listing = await client.get(f"{node.url}/v1/models", timeout=t)
                listing.raise_for_status()
                models, loaded = _openai_listing(listing.json())
        except (httpx.HTTPError, ValueError) as exc:
            self.check_failed(node, f"health check: {type(exc).__name__}: {exc}".strip())
            return False
        node.models, node.loaded = models, loaded
        self.check_passed(node)
        return True

    def check_passed(self, node: Node) -> None:
        now = time.monotonic()
        was = node.usable()
        node.healthy = True
        node.checked = True
        node.backoff = 0.0
        node.last_error = ""
        node.next_check = now + self.settings.health_interval
        if node.breaker_open and now - node.opened_at >= self.settings.breaker_cooldown:
            node.breaker_open = False
            node.failures = 0
            log.info("pool node %s: breaker closed, back in the pool", node.name)
        elif not node.breaker_open:
            node.failures = 0
        if node.usable() != was:
            if node.usable():
                log.info(
                    "pool node %s (%s) is healthy: %s",
                    node.name,
                    node.url,
                    ", ".join(sorted(node.models)) or "no models",
                )
            self.on_change(node)

    def check_failed(self, node: Node, why: str) -> None:
        now = time.monotonic()
        was = node.usable()
        node.healthy = False
        node.checked = True
        node.last_error = why
        node.backoff = min(self.settings.backoff_max, node.backoff * 2 if node.backoff else self.settings.backoff_start)
        node.next_check = now + node.backoff
        self._failure(node, now)
        if was:
            log.warning("pool node %s (%s) is unhealthy: %s", node.name, node.url, why)
        if node.usable() != was:
            self.on_change(node)

    def _failure(self, node: Node, now: float) -> None:
        node.failures += 1
        if node.failures >= self.settings.breaker_failures:
            if not node.breaker_open:
                log.warning("pool node %s: breaker open after %d failures", node.name, node.failures)
            node.breaker_open = True
            node.opened_at = now

    def request_failed(self, node: Node, why: str) -> None:
        """A request could not be served by the node (connection refused/reset, 5xx before any byte)."""
        self.check_failed(node, f"request: {why}")
        self._wake.set()

    def request_succeeded(self, node: Node) -> None:
        if not node.breaker_open:
            node.failures = 0

    async def run(self, client: httpx.AsyncClient) -> None:
        """Check every node now, then each when it is due (healthy: every health_interval; failing: back-off)."""
        while True:
            now = time.monotonic()
            due = [n for n in self.nodes if n.next_check <= now]
            if due:
                await asyncio.gather(*(self.check(client, n) for n in due))
            nxt = min((n.next_check for n in self.nodes), default=now + 60) - time.monotonic()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, nxt))

    def start(self, client: httpx.AsyncClient) -> None:
        if self.nodes and self._task is None:
            self._task = asyncio.create_task(self.run(client))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------------ choice

    def holders(self, model: str) -> list[Node]:
        """Nodes that list the model, healthy or not."""
        return [n for n in self.nodes if model in n.models or model in n.loaded]

    def candidates(self, model: str, size: int | None = None) -> list[Node]:
        """Usable nodes that have the model and fit it, best first: loaded, least outstanding, least recently chosen."""
        nodes = [n for n in self.holders(model) if n.usable() and n.fits(model, size)]
        return sorted(nodes, key=lambda n: (model not in n.loaded, n.outstanding, n.last_chosen))

    def acquire(self, node: Node) -> None:
        node.outstanding += 1
        node.last_chosen = time.monotonic()

    def release(self, node: Node) -> None:
        node.outstanding = max(0, node.outstanding - 1)
