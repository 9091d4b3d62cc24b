"""Prometheus metrics of the gateway (prometheus_client), one registry per app instance.

With several worker processes (``polyroute serve --workers N``) the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: prometheus_client then keeps every
value in per-process files there, and :func:`render` merges all workers' files, so a scrape
sees the whole service whichever worker answers it (gauges carry a ``pid`` label).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
            "polyroute_policy_info",
            "The serving policy bundle of each arm (1 serving, 0 replaced)",
            ["arm", "version"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "polyroute_policy_reloads", "Policy swaps by hot reload", ["arm"], registry=r
        )
        self.policy_reload_failures = Counter(
            "polyroute_policy_reload_failures",
            "Failed policy reloads (the old policy kept serving), by arm and stage",
            ["arm", "stage"],
            registry=r,
        )
        self.canary_share = Gauge(
            "polyroute_canary_share", "Share of routed requests sent to the challenger", registry=r
        )
        self.canary_requests = Counter(
            "polyroute_canary_requests", "Routed requests by canary arm", ["arm"], registry=r
        )
        self.canary_stops = Counter(
            "polyroute_canary_stops",
            "Canaries stopped by the sequential test, by reason",
            ["reason"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "polyroute_circuit_state",
            "Each model's circuit breaker: 0 closed, 1 half-open, 2 open",
            ["model"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "polyroute_circuit_transitions",
            "Breaker state changes, by model and the model's new state",
            ["model", "state"],
            registry=r,
        )
        self.usage_estimated = Counter(
            "polyroute_usage_estimated",
            "Streamed outcomes whose tokens and cost were estimated (the upstream sent no usage)",
            ["model"],
            registry=r,
        )
        # traffic (router.traffic): limits, budgets, priorities, the shared store
        self.rate_limited = Counter(
            "polyroute_rate_limited",
            "Requests refused (429) by a tenant's rate limit, by tenant and limit",
            ["tenant", "limit"],
            registry=r,
        )
        self.budget_refused = Counter(
            "polyroute_budget_refused",
            "Requests refused (429) by a tenant's daily budget",
            ["tenant"],
            registry=r,
        )
        self.shed = Counter(
            "polyroute_shed",
            "Requests refused (503) by a saturated worker, by priority",
            ["priority"],
            registry=r,
        )
        self.admission_waits = Counter(
            "polyroute_admission_waits",
            "Requests that could not have an in-flight slot at once, by result (admitted after "
            "waiting, timed_out at queue_wait_ms, refused_at_once: the queue was not draining)",
            ["result"],
            registry=r,
        )
        self.admission_limit = Gauge(
            "polyroute_admission_limit",
            "The requests in flight a worker admits now (adaptive, or max_in_flight)",
            registry=r,
        )
        self.traffic_store_errors = Counter(
            "polyroute_traffic_store_errors",
            "Failed calls to the limits and budgets store, by operation and what the request "
            "got (admitted: rate limits fail open; refused: budgets fail closed; "
            "reservation_kept: a failed settlement)",
            ["op", "action"],
            registry=r,
        )


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``, or of every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
    return generate_latest(registry)
