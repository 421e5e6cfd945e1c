"""The Markdown table of ``bench/gpu.py``: one row per measurement, beside the reference figures.

The reference column holds the figures of a naive Hugging Face implementation on one
H100 (random weights, bf16, sdpa) and its targets; they apply to the full-size preset only.
"""

from __future__ import annotations

from typing import Any

# (section, key, label, reference / target)
ROWS: list[tuple[str, str, str, str]] = [
    ("bf16_vs_fp32", "image_cosine_min", "bf16 vs fp32: image vector cosine (min)", "> 0.99"),
    ("bf16_vs_fp32", "text_cosine_min", "bf16 vs fp32: text vector cosine (min)", "> 0.99"),
    ("bf16_vs_fp32", "image_active_words_jaccard", "bf16 vs fp32: active image words, Jaccard", ""),
    ("bf16_vs_fp32", "text_active_words_jaccard", "bf16 vs fp32: active text words, Jaccard", ""),
    ("image_encoding", "images_per_s", "image encoding, no decoding (images/s)", "naive 1,722 (batch 256); bound ~3,500-4,000"),
    ("image_encoding", "peak_memory_gib", "image encoding peak memory (GiB)", ""),
    ("indexing", "images_per_s", "indexing job with decoding (images/s)", "target >= 2,500"),
    ("indexing", "decode_only_images_per_s", "reader stage alone: decode, crop, thumbnail (images/s)", ""),
    ("query_encoding", "batch1_full_prompt_p50_ms", "query, batch 1, full prompt: p50 (ms)", "naive 28.4"),
    ("query_encoding", "batch1_shared_prefix_p50_ms", "query, batch 1, shared prefix: p50 (ms)", ""),
    ("query_encoding", "batch1_static_p50_ms", "query, batch 1, static shapes (+ CUDA graphs): p50 (ms)", "target <= 10; bound ~3-4.5"),
    ("query_encoding", "batch1_static_p90_ms", "query, batch 1, static shapes: p90 (ms)", ""),
    ("query_encoding", "cuda_graphs", "CUDA graphs captured", ""),
    ("query_encoding", "batched_full_prompt_queries_per_s", "queries batched, full prompt (queries/s)", "naive 846 (batch 256)"),
    ("query_encoding", "batched_shared_prefix_queries_per_s", "queries batched, shared prefix (queries/s)", "target >= 1,500"),
    ("query_table", "samples_per_s", "query table distillation step, teacher included (samples/s)", ""),
    ("query_table", "peak_memory_gib", "query table distillation peak memory (GiB)", ""),
    ("query_table", "export_s", "query table: top-64 export (s)", ""),
    ("query_table", "pass", "query table: distillation loss falls, finite", ""),
    ("training", "loop.samples_per_s", "training loop (samples/s)", "naive 186 (batch 128); target >= 300"),
    ("training", "loop.peak_memory_gib", "training peak memory (GiB)", "naive 23.2 (batch 128)"),
    ("training", "loop.estimated_peak_gb", "training peak memory, estimate (GB)", "bench/memory_estimate.py"),
    ("training", "loop.losses_finite", "training losses finite", ""),
    ("training", "shared_prefix_check.loss_relative_diff", "shared prefix vs full prompt: loss, relative diff", ""),
    ("training", "shared_prefix_check.grad_cosine_min", "shared prefix vs full prompt: gradient cosine (min)", ""),
    ("training", "shared_prefix_check.pass", "shared prefix vs full prompt: pass", ""),
]  # fmt: skip


def _get(section: dict[str, Any], key: str) -> Any:
    value: Any = section
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        if abs(value) < 10:  # cosines and overlaps: enough digits to see 0.99995 from 1
            return f"{value:.5f}".rstrip("0").rstrip(".")
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(results: dict[str, Any]) -> str:
    meta = results["machine"]
    where = meta.get("gpu") or meta.get("cpu") or meta["device"]
    lines = [
        f"`bench/gpu.py --preset {meta['preset']}`, {meta['date']}, {where}, "
        f"{meta['host_cpus']} host CPUs, torch {meta['torch']}, tokenizer: {meta['tokenizer']}.",
        "",
        "| measurement | result | reference / target (full size, one H100) |",
        "|---|---|---|",
    ]
    sections = results["sections"]
    for name, key, label, reference in ROWS:
        section = sections.get(name)
        if section is None:
            continue
        if "error" in section or "skipped" in section:
            continue
        value = _get(section, key)
        if value is None:
            continue
        lines.append(f"| {label} | {_show(value)} | {reference} |")
    for name, section in sections.items():
        problem = section.get("error") or section.get("skipped")
        if problem:
            lines.append(f"| {name} | **not measured**: {problem} | |")
    lines.append("")
    return "\n".join(lines)
