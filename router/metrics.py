"""Prometheus metrics of the gateway (prometheus_client), one registry per app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "polyroute_requests", "Requests by route and status", ["route", "status"], registry=r
        )
        self.decisions = Counter(
            "polyroute_decisions", "Routing decisions by chosen model", ["model"], registry=r
        )
        self.overhead = Histogram(
            "polyroute_router_overhead_seconds",
            "Time spent in the router itself (decision path + bookkeeping)",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "polyroute_upstream_latency_seconds", "Upstream call latency", ["model"], registry=r
        )
        self.errors = Counter("polyroute_errors", "Errors by kind", ["kind"], registry=r)
        self.cost = Counter("polyroute_cost_usd", "Cost of served calls", ["model"], registry=r)
        self.policy_version = Gauge(
            "polyroute_policy_info", "The serving policy bundle", ["version"], registry=r
        )
