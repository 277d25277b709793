"""Prometheus metrics.

Counters of what this process saw (requests, cache hits, waits) are kept in memory, as
Prometheus expects one series per process. Tier state, GPU time, cost and starts are
shared facts read from Redis at scrape time, so every process reports the same truth.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

COLD_START_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tiergate_requests", "Chat requests forwarded or answered", ["tier", "cache"], registry=self.registry)
        self.cache_events = Counter("tiergate_cache", "Cache lookups", ["tier", "result"], registry=self.registry)
        self.wait = Histogram("tiergate_wait_seconds", "Time requests waited for their tier to be ready",
                              ["tier"], buckets=COLD_START_BUCKETS, registry=self.registry)
        self._shared: _SharedCollector = _SharedCollector()
        self.registry.register(self._shared)

    def request(self, tier: str, cache: str, waited: float) -> None:
        self.requests.labels(tier, cache).inc()
        self.wait.labels(tier).observe(waited)

    def cache(self, tier: str, *, hit: bool) -> None:
        self.cache_events.labels(tier, "hit" if hit else "miss").inc()

    def render(self, tiers: list[dict]) -> bytes:
        self._shared.tiers = tiers
        return generate_latest(self.registry)


class _SharedCollector:
    """Turns a `/api/tiers` snapshot into gauges at scrape time."""

    STATES = ("stopped", "starting", "ready", "stopping", "failed")

    def __init__(self) -> None:
        self.tiers: list[dict] = []

    def collect(self):
        state = GaugeMetricFamily("tiergate_tier_state", "1 for the tier's current state", labels=["tier", "state"])
        gpu = CounterMetricFamily("tiergate_gpu_seconds", "Billed GPU seconds", labels=["tier"])
        cost = CounterMetricFamily("tiergate_cost", "Cost of billed GPU time", labels=["tier"])
        always = GaugeMetricFamily("tiergate_always_on_cost", "What an always-on machine would have cost", labels=["tier"])
        starts = CounterMetricFamily("tiergate_starts", "Machine starts", labels=["tier"])
        queued = GaugeMetricFamily("tiergate_queue_length", "Requests waiting for the tier", labels=["tier"])
        inflight = GaugeMetricFamily("tiergate_inflight", "Requests being answered", labels=["tier"])
        boot = GaugeMetricFamily("tiergate_cold_start_eta_seconds", "Median of recent cold starts", labels=["tier"])
        for t in self.tiers:
            for s in self.STATES:
                state.add_metric([t["name"], s], 1.0 if t["state"] == s else 0.0)
            gpu.add_metric([t["name"]], t["gpu_seconds"])
            cost.add_metric([t["name"]], t["cost"])
            always.add_metric([t["name"]], t["always_on_cost"])
            starts.add_metric([t["name"]], t["starts"])
            queued.add_metric([t["name"]], t["queued"])
            inflight.add_metric([t["name"]], t["inflight"])
            boot.add_metric([t["name"]], t["boot_eta"])
        yield from (state, gpu, cost, always, starts, queued, inflight, boot)
