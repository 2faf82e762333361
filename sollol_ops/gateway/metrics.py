"""The gateway's Prometheus metrics (`GET /metrics`), in a registry of its own per application."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "sollol_gateway_requests",
            "Requests answered, by API endpoint, route (pool, shard, gateway), model, node and HTTP status.",
            ["endpoint", "route", "model", "node", "status"],
            registry=r,
        )
        self.ttft = self._latency(
            "sollol_gateway_time_to_first_token_seconds",
            "From the request to the first byte of the upstream's answer (the first token of a stream).",
        )
        self.duration = self._latency(
            "sollol_gateway_request_duration_seconds", "From the request to the last byte of the answer."
        )
        self.in_flight = Gauge(
            "sollol_gateway_requests_in_flight", "Requests being answered now.", ["route", "node"], registry=r
        )
        self.queued = Gauge(
            "sollol_gateway_requests_queued",
            "Requests sent upstream that have no first byte yet (waiting for a slot or in prompt processing).",
            ["route", "node"],
            registry=r,
        )
        self.node_healthy = Gauge(
            "sollol_gateway_node_healthy",
            "1 when the pool node passed its last health check.",
            ["node", "api"],
            registry=r,
        )
        self.node_breaker = Gauge(
            "sollol_gateway_node_breaker_open", "1 while the node's circuit breaker is open.", ["node"], registry=r
        )
        self.node_outstanding = Gauge(
            "sollol_gateway_node_outstanding", "Requests outstanding on the node.", ["node"], registry=r
        )
        self.coordinator_up = Gauge(
            "sollol_gateway_coordinator_up", "1 when a coordinator recorded by `sollol-ops up` is running.", registry=r
        )
        # Counts since the gateway started, copied from OnDemand at each scrape. Exposed under these names (what
        # docs/gateway.md and the tests read); a prometheus_client Counter would expose `<name>_total` instead.
        self.shard_loads = self._count("loads", "Coordinators the gateway started on demand (since it started).")
        self.shard_swaps = self._count(
            "swaps", "Coordinators stopped to serve another sharded model (since the gateway started)."
        )
        self.shard_unloads = self._count("unloads", "Coordinators stopped after their keep_alive (or keep_alive 0).")
        self.shard_failures = self._count(
            "failures", "Coordinators found dead while serving (llama-server exited or lost a backend)."
        )
        self.shard_waiting = Gauge(
            "sollol_gateway_shard_waiting", "Requests waiting for a sharded model to load or swap in.", registry=r
        )
        self.shard_loading = Gauge("sollol_gateway_shard_loading", "1 while a sharded model loads.", registry=r)

    def _count(self, what: str, documentation: str) -> Gauge:
        return Gauge(f"sollol_gateway_shard_{what}", documentation, registry=self.registry)

    def _latency(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, ["route", "model", "node"], buckets=_LATENCY, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
