"""Encoders of the tiny model: shapes, norms, pooling, gradients, batch invariance, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from model.lexical import l2norm, max_pooled_scores
from model.losses import LexVLALoss
from model.sparsify import default_threshold

CAPTIONS = ["a red circle", "a large blue square left of a small green star", "two dogs"]


def _images(n, size=(240, 200)):
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)) for _ in range(n)
    ]


def test_outputs_are_non_negative_unit_vectors(tiny_model):
    v = len(tiny_model.vocabulary)
    text = tiny_model.encode_texts(CAPTIONS)
    image = tiny_model.encode_pil(_images(2))
    for out, n in ((text, 3), (image, 2)):
        assert out.shape == (n, v) and out.dtype == torch.float32
        assert (out > 0).all()  # elu1p is strictly positive
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(n))
    rows = tiny_model.sparsify(image)
    np.testing.assert_array_equal(rows.toarray() != 0, image.numpy() > default_threshold(v))


def test_text_vector_does_not_depend_on_batch_padding(tiny_model):
    alone = tiny_model.encode_texts([CAPTIONS[0]])
    batched = tiny_model.encode_texts(CAPTIONS)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["tiny_checkpoint", "tiny_lora_checkpoint"])
def test_prefix_cache_gives_the_full_prompt_result(which, request):
    from model import LexVLA

    model = LexVLA.from_pretrained(request.getfixturevalue(which))
    with torch.no_grad():  # LoRA's B starts at zero: perturb so LoRA changes the prefix too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    cached = model.encode_texts(CAPTIONS)
    assert model.text._prefix is not None
    model.text.use_prefix_cache = False
    full = model.encode_texts(CAPTIONS)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    model.train()
    assert model.text._prefix is None  # training invalidates the cache


def test_pooled_vector_is_max_of_patch_scores(tiny_model):
    pixels = tiny_model.preprocess(_images(2))
    pooled = tiny_model.encode_images(pixels)
    scores = tiny_model.image.patch_scores(pixels)
    grid = tiny_model.image.grid_size
    assert grid == 16 and scores.shape == (2, grid * grid, len(tiny_model.vocabulary))
    torch.testing.assert_close(pooled, l2norm(scores.max(dim=1).values), atol=1e-6, rtol=1e-5)
    patches = tiny_model.patch_vectors(pixels)
    torch.testing.assert_close(patches.norm(dim=-1), torch.ones(2, grid * grid))


def test_chunked_and_unchunked_pooling_agree_with_gradients():
    torch.manual_seed(0)
    feats = torch.randn(3, 20, 16, dtype=torch.float64, requires_grad=True)
    book = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    full = max_pooled_scores(feats, book, chunk=50)
    (g_feats_full, g_book_full) = torch.autograd.grad(full.pow(2).sum(), (feats, book))
    chunked = max_pooled_scores(feats, book, chunk=7)
    (g_feats, g_book) = torch.autograd.grad(chunked.pow(2).sum(), (feats, book))
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(g_feats, g_feats_full)
    torch.testing.assert_close(g_book, g_book_full)
    torch.testing.assert_close(full, (feats @ book.T).max(dim=1).values)


def _grads_after_step(model):
    model.train()
    pixels = model.preprocess(_images(3))
    out = model(pixels, CAPTIONS)
    loss = LexVLALoss(warmup_steps=0)(out["image"], out["text"], out["logit_scale"])["loss"]
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_frozen_parts_get_no_gradient_and_trainable_parts_do(tiny_lora_checkpoint):
    from model import LexVLA

    model = LexVLA.from_pretrained(tiny_lora_checkpoint, trainable=True)
    with torch.no_grad():  # LoRA's B starts at zero; make its A gradient non-trivial too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    grads = _grads_after_step(model)
    lora = {n: g for n, g in grads.items() if "lora_" in n}
    assert lora and all(g is not None and g.abs().sum() > 0 for g in lora.values())
    for n, g in grads.items():
        if n.startswith("image.backbone.") or (n.startswith("text.") and "lora_" not in n):
            assert g is None, f"frozen parameter {n} received a gradient"
    for n in (
        "image.codebook",
        "logit_scale",
        "image.adapter.proj.weight",
        "image.adapter.qkv.weight",
    ):
        assert grads[n] is not None and grads[n].abs().sum() > 0, n
    assert "text.codebook" not in grads  # the text codebook is a frozen buffer
    assert set(model.parameter_groups()) == {"adapter", "visual_codebook", "text", "temperature"}
    assert model.image.backbone.training is False  # frozen DINOv2 stays in eval mode


def test_full_text_mode_trains_the_whole_llama(tiny_checkpoint):
    from model import LexVLA

    model = LexVLA.from_pretrained(tiny_checkpoint, trainable=True)
    grads = _grads_after_step(model)
    assert grads["text.backbone.layers.0.self_attn.q_proj.weight"] is not None
    assert grads["image.backbone.embeddings.patch_embeddings.projection.weight"] is None


def test_bad_inputs_raise_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="empty batch"):
        tiny_model.encode_texts([])
    with pytest.raises(ValueError, match="empty"):
        tiny_model.encode_texts(["a dog", "  "])
    with pytest.raises(TypeError, match="list of captions"):
        tiny_model.encode_texts("a dog")
    with pytest.raises(ValueError, match="empty batch"):
        tiny_model.encode_pil([])
    with pytest.raises(ValueError, match=r"mode 'L'.*RGB"):
        tiny_model.encode_pil([_images(1)[0], Image.new("L", (50, 50))])
    with pytest.raises(ValueError, match="mode 'RGBA'"):
        tiny_model.encode_pil([Image.new("RGBA", (50, 50))])
    with pytest.raises(ValueError, match="pixel values of shape"):
        tiny_model.encode_images(torch.zeros(1, 3, 100, 100))


def test_real_llama2_vocabulary_in_a_tiny_model(llama2_tokenizer_dir):
    from model import LexVLA, load_preset

    cfg = load_preset("tiny").with_overrides(
        {"text.tokenizer": str(llama2_tokenizer_dir), "text.arch.vocab_size": 32000, "tiny": None}
    )
    model = LexVLA.from_config(cfg).eval()
    assert len(model.vocabulary) == 17234 and model.config.vocab_size == 17234
    out = model.encode_texts(["a dog runs on the beach"])
    assert out.shape == (1, 17234)


def test_bf16_keeps_rotary_frequencies_in_float32_and_the_vectors(tiny_lora_checkpoint):
    """A bf16 model (``LexVLA.place``, random backbones built in their dtype) stays close to fp32."""
    from model import LexVLA, load_preset
    from model.backbones import load_llama

    half = LexVLA.from_pretrained(tiny_lora_checkpoint)
    half.encode_texts(CAPTIONS)  # a prefix cache made by the float32 weights ...
    half.place(dtype=torch.bfloat16)
    assert half.text._prefix is None  # ... is dropped by the cast
    full = LexVLA.from_pretrained(tiny_lora_checkpoint)
    rotary = {n: b.dtype for n, b in half.named_buffers() if "inv_freq" in n}
    assert rotary and set(rotary.values()) == {torch.float32}
    assert half.image.codebook.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity
    assert cos(half.encode_texts(CAPTIONS), full.encode_texts(CAPTIONS)).min() > 0.999
    assert half.text._prefix is not None and half.text._prefix.keys[0].dtype == torch.bfloat16
    pixels = full.preprocess(_images(2))
    assert cos(half.encode_images(pixels), full.encode_images(pixels)).min() > 0.99
    text = load_preset("tiny").text  # random weights from ``arch``: built directly in bf16
    llm = load_llama(
        text.model_copy(update={"arch": text.arch | {"vocab_size": 300}}), None, torch.bfloat16
    )
    assert {p.dtype for p in llm.parameters()} == {torch.bfloat16}
    assert llm.model.rotary_emb.inv_freq.dtype == torch.float32
