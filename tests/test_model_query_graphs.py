"""Static-shape query encoding (length buckets, small-batch padding): the plain path's vectors.

On CPU every ``StaticCall`` runs eagerly on its static buffers, which is the data flow a CUDA graph
replays: the inputs of each call copied into the same buffers, the output read from them.
"""

import pytest
import torch

from model import LexVLA
from model.prompt_prefix import prefix_mask

CAPTIONS = [  # 3, 10, 20 and 64 (truncated) caption tokens with the tiny tokenizer
    "a red circle",
    "a large blue square left of a small green star",
    "a large blue square left of a small green star, two red circles below a big yellow triangle",
    "grass " * 100,  # truncated to max_caption_tokens: the last bucket
]


@pytest.fixture(scope="module")
def lora_model(tiny_lora_checkpoint):
    model = LexVLA.from_pretrained(tiny_lora_checkpoint)
    with torch.no_grad():  # LoRA's B starts at zero: perturb so LoRA changes the prefix too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def _plain(model, captions):
    model.text.use_prefix_cache = False
    try:
        return model.encode_texts(captions)
    finally:
        model.text.use_prefix_cache = True


def test_every_bucket_and_batch_size_gives_the_full_prompt_vectors(lora_model):
    text = lora_model.text
    reference = _plain(lora_model, CAPTIONS)
    static = text.enable_static_queries(batch_sizes=(1, 2, 4))
    try:
        assert not static.graphs_active  # CPU: the eager fallback on the same static buffers
        one_by_one = torch.cat([lora_model.encode_texts([c]) for c in CAPTIONS])
        three = lora_model.encode_texts(CAPTIONS[:3])  # padded to batch 4, the pad row dropped
        lengths = {length for (_, length) in static.calls}
        again = lora_model.encode_texts([CAPTIONS[1]])  # a reused shape reads the new inputs
    finally:
        text.static = None
    torch.testing.assert_close(one_by_one, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(three, reference[:3], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again[0], reference[1], atol=1e-5, rtol=1e-4)
    assert three.shape[0] == 3
    assert len(lengths) == 4  # the four captions fall into four buckets
    assert max(lengths) == text.cfg.max_caption_tokens + len(text.suffix_ids)


def test_static_lengths_buckets_and_warm_up(lora_model):
    text = lora_model.text
    suffix = len(text.suffix_ids)
    cap = text.cfg.max_caption_tokens
    assert text.static_lengths() == [b + suffix for b in sorted({8, 16, 32, min(64, cap), cap})]
    tokens = text.tokenize(["a red circle"], prefix=False, bucketed=True)
    assert tokens["input_ids"].shape[1] == 8 + suffix
    assert int(tokens["attention_mask"].sum()) < 8 + suffix  # left padding, masked
    assert (
        tokens["position_ids"][0, -1] == len(text.prefix_ids) + tokens["attention_mask"].sum() - 1
    )
    static = text.enable_static_queries(batch_sizes=(1, 2))
    try:
        assert static.warm_up() == 2 * len(text.static_lengths())
        with pytest.raises(ValueError, match="up to batch 2"):
            static.encode(CAPTIONS[:3])
        lora_model.train()  # new weights from here on: shapes built for the old ones are gone
        assert static.calls == {}
        lora_model.eval()
        with pytest.raises(ValueError, match="empty"):
            lora_model.encode_texts(["a dog", " "])
    finally:
        text.static = None


def test_static_shapes_need_the_shared_prefix(lora_model):
    lora_model.text.use_prefix_cache = False
    try:
        with pytest.raises(ValueError, match="shared prompt prefix"):
            lora_model.text.enable_static_queries()
    finally:
        lora_model.text.use_prefix_cache = True


def test_prefix_mask_sees_the_prefix_and_real_tokens_up_to_itself():
    caption_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    mask = prefix_mask(caption_mask, 2, "sdpa", torch.float32)
    assert mask.shape == (2, 1, 3, 5) and mask.dtype == torch.bool
    assert mask[:, 0, :, :2].all()  # every row, padding included, sees the prefix
    assert mask[0, 0, 2].tolist() == [True, True, False, True, True]  # not the padding
    assert mask[1, 0, 0].tolist() == [True, True, True, False, False]  # causal
    additive = prefix_mask(caption_mask, 2, "eager", torch.float32)
    assert (additive == 0).eq(mask).all() and additive.min() == torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="4-D mask"):
        prefix_mask(caption_mask, 2, "flash_attention_2", torch.float32)
