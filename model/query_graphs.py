"""Small-batch query encoding at static shapes: caption-length buckets, CUDA graphs on CUDA.

A search query is a handful of tokens, so at batch 1 the 7B text encoder is bound by reading its
13.5 GB of weights (~3-5 ms on an H100-class GPU) and by Python launching ~1,000 kernels, which
costs more than the arithmetic. A CUDA graph records those launches once and replays them with a
single call. A graph has fixed shapes and fixed input addresses, so:

- captions are padded (on the left, masked) to a **length bucket** (``TextEncoder.length_buckets``,
  in caption tokens: 8, 16, 32, 64 by default), and small batches to a batch size of
  ``batch_sizes`` (padding rows repeat the first caption and are dropped);
- each (batch, bucket) shape gets one :class:`StaticCall`: input buffers that every call copies
  into, the prefix's keys and values (``model.prompt_prefix``, fixed while the weights are), and
  the output buffer the graph writes. Graphs are captured lazily, the first time a shape is
  used (or all at once with :meth:`StaticQueries.warm_up`), and share one memory pool.

Everything the captured function does is decided before capture (the 4-D mask is built from the
static padding buffer inside the graph; nothing reads a tensor's value on the host), which is
why this wraps a plain function with ``torch.cuda.CUDAGraph`` rather than ``torch.compile(mode=
"reduce-overhead")``: no compilation time, no graph breaks in transformers' or peft's Python.

Off CUDA (or when capture fails) each ``StaticCall`` runs the same function eagerly on the same
buffers, which is how the CPU tests check that every bucket and batch size gives the plain path's
vectors. The graphs belong to one set of weights: ``TextEncoder`` drops them whenever its prefix
cache is invalidated (``train()``, another device).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


class StaticCall:
    """One fixed-shape call: copy inputs into the static buffers, run (or replay), copy out."""

    def __init__(self, inputs: dict[str, torch.Tensor], fn: Callable[[], torch.Tensor]):
        self.inputs, self.fn = inputs, fn
        self.graph: Any = None
        self.output: torch.Tensor | None = None

    def capture(self, pool: Any) -> None:
        """Record ``fn`` as a CUDA graph (after warm-up runs on a side stream, as CUDA requires)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.output = self.fn()
        self.graph = graph

    def __call__(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        for name, value in values.items():
            self.inputs[name].copy_(value, non_blocking=True)
        if self.graph is None:
            return self.fn()
        self.graph.replay()
        assert self.output is not None
        return self.output.clone()


class StaticQueries:
    """Static-shape encodings of small query batches for one ``TextEncoder``."""

    def __init__(self, encoder: Any, batch_sizes: Sequence[int] = (1,), graphs: bool = True):
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
        self.encoder = encoder
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        self.want_graphs = graphs
        self.calls: dict[tuple[int, int], StaticCall] = {}
        self.prefix: Any = None
        self.pool: Any = None
        self.lock = threading.Lock()

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    @property
    def graphs_active(self) -> bool:
        return self.want_graphs and self.encoder.codebook.device.type == "cuda"

    def clear(self) -> None:
        """Forget every shape (the weights or the device changed)."""
        with self.lock:
            self.calls.clear()
            self.prefix, self.pool = None, None

    def _batch_for(self, n: int) -> int:
        return next(b for b in self.batch_sizes if b >= n)

    def _call(self, batch: int, length: int) -> StaticCall:
        prefix = self.encoder.prefix_cache()
        if prefix is not self.prefix:  # new weights or device: old graphs read stale tensors
            self.calls.clear()
            self.prefix, self.pool = prefix, None
        key = (batch, length)
        call = self.calls.get(key)
        if call is None:
            call = self._build(batch, length, prefix)
            self.calls[key] = call
        return call

    def _build(self, batch: int, length: int, prefix: Any) -> StaticCall:
        device = prefix.device
        inputs = {
            "input_ids": torch.full((batch, length), self.encoder.pad_id, device=device),
            "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
            "position_ids": torch.zeros(batch, length, dtype=torch.long, device=device),
        }
        call = StaticCall(inputs, lambda: self.encoder.encode_after_prefix(inputs, prefix))
        if self.graphs_active:
            try:
                if self.pool is None:
                    self.pool = torch.cuda.graph_pool_handle()
                call.capture(self.pool)
            except Exception as exc:  # a capture failure must not take the service down
                log.warning(
                    "CUDA graph capture failed for batch %d x %d tokens (%s: %s); this shape "
                    "runs eagerly",
                    batch,
                    length,
                    type(exc).__name__,
                    exc,
                )
                call.graph = None
        return call

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Dense vectors (n, V) of at most ``max_batch`` captions, at a bucketed static shape."""
        n = len(captions)
        if n > self.max_batch:
            raise ValueError(f"{n} captions: static shapes go up to batch {self.max_batch}")
        batch = self._batch_for(n)
        padded = list(captions) + [captions[0]] * (batch - n)
        tokens = self.encoder.tokenize(padded, prefix=False, bucketed=True)
        length = int(tokens["input_ids"].shape[1])
        with torch.inference_mode(), self.lock:
            out = self._call(batch, length)(tokens)
        return out[:n]

    def warm_up(self, batch_sizes: Sequence[int] | None = None) -> int:
        """Build (on CUDA: capture) every (batch, bucket) shape now; returns how many exist."""
        sizes = self.batch_sizes if batch_sizes is None else tuple(batch_sizes)
        with torch.inference_mode(), self.lock:
            for length in self.encoder.static_lengths():
                for batch in sizes:
                    self._call(batch, length)
        return len(self.calls)
