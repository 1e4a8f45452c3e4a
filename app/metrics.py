"""Every Prometheus series the service exposes, in one place.

The API process serves them at /metrics; the flusher serves its own at :FLUSHER_METRICS_PORT.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

http_requests = Counter(
    "referral_http_requests_total", "HTTP requests answered.", ["route", "method", "status"]
)
http_latency = Histogram(
    "referral_http_request_duration_seconds",
    "Time from request to response, per route.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
clicks_buffered = Counter(
    "referral_clicks_buffered_total", "Clicks durably written to the Redis stream."
)
clicks_spooled = Counter(
    "referral_clicks_spooled_total", "Clicks written to the local spool file while Redis was down."
)
clicks_replayed = Counter(
    "referral_clicks_replayed_total", "Spooled clicks replayed into the Redis stream."
)
clicks_lost = Counter(
    "referral_clicks_lost_total",
    "Clicks answered with a redirect that neither Redis nor the spool accepted.",
)
click_write_batch = Histogram(
    "referral_click_write_batch_size",
    "Clicks coalesced into one Redis write.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
degraded = Gauge(
    "referral_degraded", "1 while Redis is unreachable and clicks go to the local spool."
)
spool_pending = Gauge("referral_spool_pending_files", "Spool files waiting for replay.")
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
errors = Counter("referral_errors_total", "Errors by component.", ["component"])

# Flusher
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
