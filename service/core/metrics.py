"""Prometheus metrics: one registry per app, and one view over all the workers of a server.

In one process each app has its own registry (so several apps can live in one test process).
Under ``lexvla serve --workers N`` the server sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers:
prometheus_client then keeps every value in per-process files there, and a scrape of any worker
collects all of them (``MultiProcessCollector``): counters and histograms are summed over the
workers, ``lexvla_in_flight`` too, and ``lexvla_index_version_info`` has one series per worker
(label ``pid``), so a scrape shows which version each one serves.

Per-stage latency histograms (``lexvla_stage_seconds{stage=...}``): ``encode`` (query text or
image -> sparse vector, including the micro-batch wait), ``search`` (index top-k), ``rescore``
(exact scores and per-word contributions), ``explain`` (a whole explanation), ``patches``
(patch-level vectors of one image) and ``heatmap`` (drawing one PNG). Plus HTTP latency by route,
load-shedding rejections, cache hits and misses, micro-batch sizes and the served index's size.
"""

from __future__ import annotations

import os
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
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when first imported
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
        self.in_flight = Gauge(
            "lexvla_in_flight", "Requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.cache = Counter("lexvla_cache_total", "Cache lookups", ["cache", "result"], registry=r)
        self.batch_size = Histogram(
            "lexvla_encode_batch_size",
            "Texts per model call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.index_images = Gauge(
            "lexvla_index_images",
            "Images in the served index",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.index_version = Gauge(
            "lexvla_index_version_info",
            "1 for the index version this process serves",
            ["version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.index_reloads = Counter("lexvla_index_reloads_total", "Index swaps", registry=r)
        self.index_open_failures = Counter(
            "lexvla_index_open_failures_total",
            "Index versions that failed to open (the previous one kept serving)",
            registry=r,
        )
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

    def served(self, version: str, images: int, previous: str | None = None) -> None:
        """This process serves ``version`` (``images`` images) from now on."""
        if previous is not None:
            self.index_version.labels(previous).set(0)
            self.index_reloads.inc()
        self.index_version.labels(version).set(1)
        self.index_images.set(images)

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self.cache.labels(cache, "hit" if hit else "miss").inc()

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):  # every worker's values, not only this one's
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
