"""Every Prometheus series the service exposes, in one place.

The API process serves them at /metrics; the flusher serves its own at :FLUSHER_METRICS_PORT.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestStats:
    """Request counts and latency histogram per route, kept in plain ints and floats.

    prometheus_client's Counter and Histogram take a lock per update; on the redirect, at
    thousands of requests per second, that was ~6 % of the CPU. Requests are all handled on the
    event loop thread, and /metrics is served from it too, so no lock is needed here.
    Exposed as `referral_http_requests_total{route,method,status}` and
    `referral_http_request_duration_seconds{route}`. A count is a one-element list (a "cell"), so
    the redirect can hold its own cells and count a click with one increment.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts: dict[tuple[str, str, int], list[int]] = {}
        # route -> [count per bucket (+Inf last), sum of seconds]
        self.latency: dict[str, tuple[list[int], list[float]]] = {}

    def cell(self, route: str, method: str, status: int) -> list[int]:
        """The counter of (route, method, status): add to `cell[0]`."""
        return self.counts.setdefault((route, method, status), [0])

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.cell(route, method, status)[0] += 1
        self.observe_latency(route, seconds)

    def observe_latency(self, route: str, seconds: float) -> None:
        entry = self.latency.get(route)
        if entry is None:
            entry = self.latency[route] = ([0] * (len(self.buckets) + 1), [0.0])
        entry[0][bisect_left(self.buckets, seconds)] += 1
        entry[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "referral_http_requests",
            "HTTP requests answered.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), (n,) in sorted(self.counts.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "referral_http_request_duration_seconds",
            "Time from request to response, per route (for the redirect, one request in 8).",
            labels=["route"],
        )
        for route, (per_bucket, total) in sorted(self.latency.items()):
            cumulative, running = [], 0
            for bound, n in zip((*self.buckets, float("inf")), per_bucket, strict=True):
                running += n
                cumulative.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]  # prometheus_client is untyped here
            latency.add_metric([route], cumulative, sum_value=total[0])
        yield latency


http_stats = RequestStats()
REGISTRY.register(http_stats)

events_buffered = Counter(
    "referral_events_buffered_total",
    "Events (clicks, conversions) durably written to their Redis stream.",
    ["stream"],
)
events_spooled = Counter(
    "referral_events_spooled_total",
    "Events written to the local spool file while Redis was down.",
    ["stream"],
)
events_replayed = Counter(
    "referral_events_replayed_total", "Spooled events replayed into Redis.", ["stream"]
)
events_lost = Counter(
    "referral_events_lost_total",
    "Events answered as accepted that neither Redis nor the spool took.",
    ["stream"],
)
event_write_batch = Histogram(
    "referral_event_write_batch_size",
    "Events coalesced into one Redis write.",
    ["stream"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
degraded = Gauge(
    "referral_degraded", "1 while Redis is unreachable and events go to the local spool."
)
spool_pending = Gauge(
    "referral_spool_pending_files", "Spool files waiting for replay, per stream.", ["stream"]
)
stream_length = Gauge("referral_stream_length", "Entries in the event stream.", ["stream"])
stream_pending = Gauge(
    "referral_stream_pending",
    "Entries delivered to a flusher but not yet acknowledged.",
    ["stream"],
)
oldest_unflushed_age = Gauge(
    "referral_oldest_unflushed_event_age_seconds",
    "Age of the oldest event still in the stream (0 when empty).",
    ["stream"],
)
redis_used_memory = Gauge(
    "referral_redis_used_memory_bytes", "Memory Redis uses (INFO memory used_memory)."
)
redis_max_memory = Gauge(
    "referral_redis_maxmemory_bytes", "Redis' maxmemory (0: no limit): at it, events are spooled."
)
errors = Counter("referral_errors_total", "Errors by component.", ["component"])
fraud_decisions = Counter(
    "referral_fraud_decisions_total",
    "Fraud rules that fired on processed conversions, by rule and action (flag, hold, reject).",
    ["rule", "action"],
)

# Flusher
conversions_processed = Counter(
    "referral_conversions_processed_total",
    "Conversions the flusher processed, by path: grouped (many per transaction, the common "
    "case), single (one per transaction); group_redone counts groups that failed and were "
    "processed one by one.",
    ["path"],
)
flush_batch_size = Histogram(
    "referral_flush_batch_size",
    "Events written to PostgreSQL per batch.",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000),
)
flush_duration = Histogram(
    "referral_flush_duration_seconds",
    "Time to write one batch to PostgreSQL and acknowledge it.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
events_flushed = Counter(
    "referral_events_flushed_total", "Events written to PostgreSQL.", ["stream"]
)
events_duplicate = Counter(
    "referral_events_duplicate_total",
    "Events delivered again and skipped by PostgreSQL (already stored).",
    ["stream"],
)
entries_claimed = Counter(
    "referral_stream_entries_claimed_total",
    "Stream entries taken over from a flusher that stopped without acknowledging them.",
    ["stream"],
)

# Outgoing webhooks (read from PostgreSQL when /metrics is scraped: app/services/health.py).
webhook_pending = Gauge(
    "referral_webhook_deliveries_pending", "Webhook deliveries waiting (due or retrying)."
)
webhook_oldest_pending = Gauge(
    "referral_webhook_oldest_pending_age_seconds",
    "Age of the oldest event with a delivery still waiting (0: none).",
)
webhook_given_up = Gauge(
    "referral_webhook_deliveries_failed", "Deliveries given up after every retry (redeliverable)."
)
webhook_disabled_endpoints = Gauge(
    "referral_webhook_endpoints_disabled", "Webhook endpoints disabled after failing too long."
)
