"""Prometheus metrics for `GET /metrics` (one registry per server, so tests can run many).

HTTP: lmforge_requests_total{route,status}, lmforge_request_errors_total{route,status},
lmforge_request_latency_seconds{route} (histogram). Engine, per model and variant:
lmforge_queue_depth, lmforge_batch_size (gauges), lmforge_batch_size_per_step,
lmforge_time_to_first_token_seconds, lmforge_generation_latency_seconds (histograms),
lmforge_generated_tokens_total, lmforge_tokens_per_second (over the last 10 s),
lmforge_prompt_tokens_total and lmforge_prefix_cache_hit_tokens_total (their ratio: the
share of prompt tokens whose keys were reused).
Routing: lmforge_variant_requests_total{model,variant,outcome}, lmforge_fallbacks_total,
lmforge_shadow_requests_total; safety: lmforge_filter_events_total{stage,rule}.
Audit log: lmforge_audit_write_failures_total (failed write attempts, retried),
lmforge_audit_rows_lost_total (rows only the error log holds), lmforge_audit_rows_altered_total
{change} (escaped, truncated, redacted, as_text), lmforge_audit_pending_rows (not yet on
disk). Connections: lmforge_connections_closed_total{reason} (header_timeout, body_timeout,
per_client_limit).
P50/P99 come from the histograms in Prometheus, e.g.
histogram_quantile(0.99, rate(lmforge_time_to_first_token_seconds_bucket[5m])), and are also
exported ready-made over the last RECENT requests for a person reading /metrics by hand:
lmforge_request_latency_recent_seconds{route,quantile} and
lmforge_time_to_first_token_recent_seconds{model,variant,quantile} (quantile 0.5 and 0.99).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATE_WINDOW_S = 10.0
RECENT = 1000  # observations per label set behind the ready-made quantiles
QUANTILES = (0.5, 0.99)


class RecentQuantiles(Collector):
    """P50 and P99 of the last RECENT observations per label set, computed at scrape."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self._values: dict[tuple[str, ...], deque[float]] = {}
        self._lock = threading.Lock()

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._values.setdefault(labels, deque(maxlen=RECENT)).append(value)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation,
                                   labels=[*self.labels, "quantile"])
        with self._lock:
            snapshot = {k: sorted(v) for k, v in self._values.items()}
        for labels, ordered in snapshot.items():
            for q in QUANTILES:
                family.add_metric([*labels, str(q)], ordered[round(q * (len(ordered) - 1))])
        yield family


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("lmforge_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("lmforge_request_errors_total", "HTTP responses >= 400",
                              ["route", "status"], registry=r)
        self.latency = Histogram("lmforge_request_latency_seconds",
                                 "time from request to the end of the response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.latency_recent = RecentQuantiles(
            "lmforge_request_latency_recent_seconds",
            f"request latency quantiles over the last {RECENT} requests", ["route"])
        r.register(self.latency_recent)
        labels = ["model", "variant"]
        self.ttft_recent = RecentQuantiles(
            "lmforge_time_to_first_token_recent_seconds",
            f"time to first token quantiles over the last {RECENT} requests", labels)
        r.register(self.ttft_recent)
        self.queue = Gauge("lmforge_queue_depth", "requests waiting for a slot", labels,
                           registry=r)
        self.batch = Gauge("lmforge_batch_size", "sequences in the running batch", labels,
                           registry=r)
        self.batch_hist = Histogram("lmforge_batch_size_per_step", "sequences per decode step",
                                    labels, buckets=BATCH_BUCKETS, registry=r)
        self.ttft = Histogram("lmforge_time_to_first_token_seconds",
                              "queueing plus prefill", labels, buckets=LATENCY_BUCKETS,
                              registry=r)
        self.generation = Histogram("lmforge_generation_latency_seconds",
                                    "request arrival to last token", labels,
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("lmforge_generated_tokens_total", "tokens generated", labels,
                              registry=r)
        self.prompt_tokens = Counter("lmforge_prompt_tokens_total",
                                     "prompt tokens of admitted requests", labels, registry=r)
        self.cached_tokens = Counter("lmforge_prefix_cache_hit_tokens_total",
                                     "prompt tokens whose keys were reused, not computed",
                                     labels, registry=r)
        self.tokens_per_second = Gauge("lmforge_tokens_per_second",
                                       f"tokens generated per second over {RATE_WINDOW_S:.0f} s",
                                       labels, registry=r)
        self.variant_requests = Counter("lmforge_variant_requests_total",
                                        "requests served per variant", [*labels, "outcome"],
                                        registry=r)
        self.fallbacks = Counter("lmforge_fallbacks_total",
                                 "requests moved from a failing variant to the primary",
                                 labels, registry=r)
        self.shadow = Counter("lmforge_shadow_requests_total", "mirrored requests",
                              [*labels, "outcome"], registry=r)
        self.filter_events = Counter("lmforge_filter_events_total",
                                     "requests rejected (input) or redactions (output)",
                                     ["stage", "rule"], registry=r)
        self.audit_failures = Counter("lmforge_audit_write_failures_total",
                                      "audit write attempts that failed (and were retried)",
                                      registry=r)
        self.audit_lost = Counter("lmforge_audit_rows_lost_total",
                                  "audit rows not written (logged in full as errors)",
                                  registry=r)
        self.audit_altered = Counter("lmforge_audit_rows_altered_total",
                                     "audit fields stored changed, by change", ["change"],
                                     registry=r)
        self.audit_pending = Gauge("lmforge_audit_pending_rows",
                                   "audit rows queued and not yet written", registry=r)
        self.connections_closed = Counter("lmforge_connections_closed_total",
                                          "connections the server closed on a slow or "
                                          "greedy client", ["reason"], registry=r)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        self.latency_recent.observe((route,), seconds)

    def engine(self, model: str, variant: str) -> EngineMetrics:
        return EngineMetrics(self, model, variant)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineMetrics:
    """The engine's observer for one model variant (called from its reader thread)."""

    def __init__(self, metrics: Metrics, model: str, variant: str) -> None:
        self.queue = metrics.queue.labels(model, variant)
        self.batch = metrics.batch.labels(model, variant)
        self.batch_hist = metrics.batch_hist.labels(model, variant)
        self.ttft = metrics.ttft.labels(model, variant)
        self._ttft_recent, self._labels = metrics.ttft_recent, (model, variant)
        self.generation = metrics.generation.labels(model, variant)
        self.tokens = metrics.tokens.labels(model, variant)
        self.prompt_tokens = metrics.prompt_tokens.labels(model, variant)
        self.cached_tokens = metrics.cached_tokens.labels(model, variant)
        self._window: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._lock = threading.Lock()
        metrics.tokens_per_second.labels(model, variant).set_function(self.tokens_per_second)

    def step(self, running: int, waiting: int, tokens: int, prompt_tokens: int,
             cached_tokens: int) -> None:
        self.queue.set(waiting)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
            self.cached_tokens.inc(cached_tokens)
        self.batch.set(running)
        if running:
            self.batch_hist.observe(running)
        if tokens:
            self.tokens.inc(tokens)
            with self._lock:
                self._window.append((time.monotonic(), tokens))
                self._in_window += tokens

    def tokens_per_second(self) -> float:
        """Tokens generated in the last RATE_WINDOW_S seconds, per second (read at scrape)."""
        with self._lock:
            old = time.monotonic() - RATE_WINDOW_S
            while self._window and self._window[0][0] < old:
                self._in_window -= self._window.popleft()[1]
            return self._in_window / RATE_WINDOW_S

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)
        self._ttft_recent.observe(self._labels, seconds)

    def finished(self, seconds: float, reason: str) -> None:
        self.generation.observe(seconds)
