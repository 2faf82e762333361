"""The gateway's Prometheus metrics (`GET /metrics`), in a registry of its own per application."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sollol_ops.serve.draft import DraftStatus

# The on-demand shard's events, counted since the gateway started (exposed as sollol_gateway_shard_<what>_total).
SHARD_COUNTS = {
    "loads": "Coordinators the gateway started on demand.",
    "swaps": "Coordinators stopped to serve another sharded model.",
    "unloads": "Coordinators stopped after their keep_alive (or keep_alive 0).",
    "failures": "Coordinators found dead while serving (llama-server exited or lost a backend).",
}
_DRAFT_LABELS = ["model", "draft"]


class DraftCollector(Collector):
    """The sharded model's speculative decoding, as llama-server counts it since it started (set before each
    scrape): counters that restart with the coordinator, as any counter of a restarted process does."""

    def __init__(self) -> None:
        self.current: tuple[str, DraftStatus] | None = None

    def collect(self) -> Iterator[Metric]:
        drafted = CounterMetricFamily(
            "sollol_gateway_shard_draft_tokens", "Tokens drafted for the sharded model.", labels=_DRAFT_LABELS
        )
        accepted = CounterMetricFamily(
            "sollol_gateway_shard_draft_accepted_tokens",
            "Drafted tokens the sharded model accepted.",
            labels=_DRAFT_LABELS,
        )
        rate = GaugeMetricFamily(
            "sollol_gateway_shard_draft_acceptance_ratio",
            "Accepted / drafted tokens of the sharded model since its coordinator started.",
            labels=_DRAFT_LABELS,
        )
        if self.current is not None:
            model, draft = self.current
            labels = [model, draft.model or draft.mode]
            if draft.drafted is not None and draft.accepted is not None:
                drafted.add_metric(labels, draft.drafted)
                accepted.add_metric(labels, draft.accepted)
            if draft.acceptance_rate is not None:
                rate.add_metric(labels, draft.acceptance_rate)
        yield from (drafted, accepted, rate)


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
        self.tokens = Counter(
            "sollol_gateway_tokens_generated",
            "Tokens generated in answers (as each answer states them), counted when the answer ends.",
            ["route", "model", "node"],
            registry=r,
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
        # Counters of the on-demand shard, brought up to OnDemand's own counts at each refresh (copy_shard_counts).
        self.shard_counts = {
            what: Counter(f"sollol_gateway_shard_{what}", documentation, registry=r)
            for what, documentation in SHARD_COUNTS.items()
        }
        self._copied = dict.fromkeys(SHARD_COUNTS, 0)
        self.shard_waiting = Gauge(
            "sollol_gateway_shard_waiting", "Requests waiting for a sharded model to load or swap in.", registry=r
        )
        self.shard_loading = Gauge("sollol_gateway_shard_loading", "1 while a sharded model loads.", registry=r)
        self.draft = DraftCollector()
        r.register(self.draft)

    def copy_shard_counts(self, counts: dict[str, int]) -> None:
        """Advance each shard counter to OnDemand's count of it (monotonic since the gateway started)."""
        for what, value in counts.items():
            if value > self._copied[what]:
                self.shard_counts[what].inc(value - self._copied[what])
                self._copied[what] = value

    def _latency(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, ["route", "model", "node"], buckets=_LATENCY, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
