"""bench/gpu.py runs every section on the CPU with the tiny preset, so it works before GPU time.

Also the pieces it relies on: the stand-in tokenizer has Llama 2's sizes, the memory estimate's
weight terms are the parameter counts, and the full-size preset refuses a machine without CUDA.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import gpu  # noqa: E402
from bench.memory_estimate import estimate  # noqa: E402
from bench.standin_tokenizer import write_standin  # noqa: E402

SECTIONS = [
    "bf16_vs_fp32",
    "image_encoding",
    "indexing",
    "query_encoding",
    "query_table",
    "training",
]


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: one thread is faster
    yield
    torch.set_num_threads(threads)


def test_tiny_run_writes_every_section(tmp_path, one_thread):
    out = tmp_path / "out"
    argv = ["--preset", "tiny", "--device", "cpu", "--out", str(out), "--workers", "1"]
    argv += ["--index-images", "8", "--train-steps", "3", "--query-repeats", "3"]
    assert gpu.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    sections = results["sections"]
    assert list(sections) == SECTIONS
    assert not [n for n, v in sections.items() if "error" in v or "skipped" in v]
    assert sections["bf16_vs_fp32"]["pass"] and sections["bf16_vs_fp32"]["finite"]
    assert sections["image_encoding"]["images_per_s"] > 0
    assert sections["indexing"]["images"] == 8
    query = sections["query_encoding"]
    assert query["cuda_graphs"] is False and query["static_shapes"] >= 4
    assert query["static_vs_eager_max_abs_diff"] < 1e-2  # bf16, different padding
    table = sections["query_table"]
    assert table["pass"] and table["timed_steps"] == 3 and table["samples_per_s"] > 0
    assert table["stored_entries"] > 0
    loop, check = sections["training"]["loop"], sections["training"]["shared_prefix_check"]
    assert loop["timed_steps"] == 1 and loop["losses_finite"] and loop["samples_per_s"] > 0
    assert check["pass"] and check["loss_relative_diff"] < 1e-5 and check["text_grad_tensors"] > 0
    page = (out / "results.md").read_text()
    assert "| training loop (samples/s) |" in page and "not measured" not in page
    assert "| query table: distillation loss falls, finite |" in page
    assert results["machine"]["preset"] == "tiny"


def test_full_size_needs_cuda_and_failures_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu.main(["--out", str(tmp_path)])
    args = gpu.parse(["--preset", "tiny", "--out", str(tmp_path)])
    run = gpu.Run(args, torch.device("cpu"), {"preset": "tiny", "date": "d", "device": "cpu",
                                              "host_cpus": 2, "torch": "t", "tokenizer": "k"})  # fmt: skip

    def broken() -> dict:
        raise RuntimeError("out of memory")

    run.section("indexing", broken)
    run.deadline = 0
    run.section("training", lambda: {"never": "run"})
    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert sections["indexing"]["error"] == "RuntimeError: out of memory"
    assert "budget" in sections["training"]["skipped"]
    assert not gpu.passed(sections["indexing"]) and not gpu.passed({"x": {"pass": False}})
    table = (tmp_path / "results.md").read_text()
    assert "| indexing | **not measured**: RuntimeError: out of memory |" in table


def test_standin_tokenizer_has_llama2_sizes_and_prompt_tokens(tmp_path):
    from transformers import LlamaTokenizer

    from model.vocabulary import Vocabulary

    tokenizer = LlamaTokenizer.from_pretrained(str(write_standin(tmp_path)))
    assert len(tokenizer) == 32000 and tokenizer.bos_token_id == 1
    assert len(Vocabulary.from_tokenizer(tokenizer, "lower-alpha")) == 17234
    # the default prompt tokenizes as with Llama 2: prefix 4 pieces (+ BOS), suffix 7
    assert tokenizer.tokenize('This sentence : "') == ["▁This", "▁sentence", "▁:", '▁"']
    assert len(tokenizer.tokenize('" means in one word : "')) == 7
    assert tokenizer.tokenize("a brown dog on the beach") == [
        "▁a", "▁brown", "▁dog", "▁on", "▁the", "▁beach"
    ]  # fmt: skip


def test_memory_estimate_terms():
    from model import load_preset
    from model.params import count_parameters

    config = load_preset("lexvla-7b").with_overrides({"text.train_mode": "lora"})
    one, two = estimate(config, 64), estimate(config, 128)
    trained = count_parameters(config)["trainable"]["params"]
    assert one["terms_gb"]["trained parts: weights, grads, AdamW (fp32)"] == round(
        trained * 16 / 1e9, 2
    )
    static = ["Llama weights (bf16, no lm_head)", "DINOv2 weights (bf16)", "text codebook (bf16)"]
    for name, value in one["terms_gb"].items():
        if name in static or name.startswith("trained"):
            assert two["terms_gb"][name] == value  # weights do not grow with the batch
        else:
            assert two["terms_gb"][name] > value  # activations do
    assert two["terms_gb"]["Llama weights (bf16, no lm_head)"] == pytest.approx(13.2, abs=0.05)


def test_full_size_model_runs_its_shapes_on_the_meta_device(tmp_path):
    """The 7B build (random weights, bf16 backbones, LoRA) and both encoders, without memory."""
    from model import LexVLA, load_preset

    config = load_preset("lexvla-7b").with_overrides(
        {"text.base": None, "image.base": None, "text.tokenizer": str(write_standin(tmp_path))}
    )
    meta = torch.device("meta")
    with meta:
        model = LexVLA.from_config(config, backbone_dtype=torch.bfloat16)
    text = model.text
    assert len(model.vocabulary) == 17234 and text.codebook.dtype == torch.bfloat16
    assert model.image.codebook.dtype == torch.float32  # trained: float32 master weights
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 108_356_609
    tokens = text.tokenize(["a brown dog on the beach", "a cat"], prefix=False, bucketed=True)
    with meta:
        prefix = text._compute_prefix()
        vectors = text.encode_after_prefix({k: v.to(meta) for k, v in tokens.items()}, prefix)
        pixels = torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
        images = model.image(pixels)
    assert prefix.keys[0].shape == (1, 32, 5, 128) and len(prefix.keys) == 32
    assert vectors.shape == images.shape == (2, 17234) and vectors.dtype == torch.float32
