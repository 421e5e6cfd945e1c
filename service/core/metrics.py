"""Prometheus metrics, one registry per app (so several apps can live in one test process).

Per-stage latency histograms (``lexvla_stage_seconds{stage=...}``): ``encode`` (query text or
image -> sparse vector, including the micro-batch wait), ``search`` (index top-k), ``rescore``
(exact scores and per-word contributions), ``explain`` (a whole explanation), ``patches``
(patch-level vectors of one image) and ``heatmap`` (drawing one PNG). Plus HTTP latency by route,
load-shedding rejections, cache hits and misses, micro-batch sizes and the served index's size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

STAGES = ("encode", "search", "rescore", "explain", "patches", "heatmap")
# 0.5 ms .. 10 s: a tiny model on CPU answers in milliseconds, a 7B one on CPU in seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)


class Timer:
    """Elapsed milliseconds of a ``with metrics.stage(...)`` block (set when it exits)."""

    ms: float = 0.0


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "lexvla_stage_seconds",
            "Latency of one stage of a request",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "lexvla_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "lexvla_rejected_total", "Requests refused with 429 (load shedding)", registry=r
        )
        self.in_flight = Gauge("lexvla_in_flight", "Requests being served", registry=r)
        self.cache = Counter("lexvla_cache_total", "Cache lookups", ["cache", "result"], registry=r)
        self.batch_size = Histogram(
            "lexvla_encode_batch_size",
            "Texts per model call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.index_images = Gauge("lexvla_index_images", "Images in the served index", registry=r)
        self.index_reloads = Counter("lexvla_index_reloads_total", "Index swaps", registry=r)
        for stage in STAGES:  # expose every stage from the start, even before its first use
            self.stage_seconds.labels(stage)

    @contextmanager
    def stage(self, name: str) -> Iterator[Timer]:
        timer = Timer()
        start = time.perf_counter()
        try:
            yield timer
        finally:
            elapsed = time.perf_counter() - start
            timer.ms = elapsed * 1000.0
            self.stage_seconds.labels(name).observe(elapsed)

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self.cache.labels(cache, "hit" if hit else "miss").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
