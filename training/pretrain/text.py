"""Pretraining a random tiny Llama on shapes captions: language modelling plus lexical prediction
(ours).

Why: LexVLA's text side is a *pretrained* Llama 2 whose frozen ``lm_head`` rows are the text
codebook (LEXVLA.md sections 2-3): its last hidden state already scores the words a sentence
means above the others. The tiny preset's Llama and codebook are random, and a random 64-d
codebook cannot hold a sparse vector at all: even a hidden state optimised freely for one
caption leaves over 90% of ``l2norm(elu1p(h @ Z.T))``'s mass above the threshold on words
outside it (docs/lab-notes.md). The codebook must be learnt *before* it is frozen, as Llama's
was.

Objective, on captions drawn from the shapes grammar and wrapped in the model's own prompt
(tokenised exactly as ``model.text_encoder.TextEncoder`` tokenises it):
- next-token cross-entropy over the whole prompt (the language model);
- at the prompt's last token, whose hidden state is the text vector, a binary cross-entropy per
  vocabulary word against the caption's shape words (``shape_words``: its colours, kinds and
  sizes), weighted by ``lexical_weight``. Binary, not a softmax: ``elu1p`` makes a word's
  absolute score matter, so the words a caption does not mean must score *below zero*, which a
  softmax never asks for (it only ranks).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import Vocabulary, bag_of_words
from model.config import TextConfig
from model.text_encoder import TextEncoder
from training.config import TextPretrainSettings
from training.data.shape_language import Shape, captions, shape_words
from training.data.shapes import sample_layout

logger = logging.getLogger(__name__)
TRAIN_SPLIT, CHECK_SPLIT = "pretrain", "pretrain-check"


SHORT_QUERY_SHARE = 0.2


def short_query(shape: Shape, rng: random.Random) -> str:
    """Some of a shape's words in caption order, no article: "red", "star", "large red star"."""
    words = [shape.size, shape.colour, shape.kind]
    keep = [w for w in words if rng.random() < 0.5] or [rng.choice(words)]
    return " ".join(keep)


def caption_stream(seed: int, split: str) -> Iterator[str]:
    """Endless texts, a pure function of the seed: one caption (any paraphrase) of a random
    layout, or (a ``SHORT_QUERY_SHARE`` of them) a short query such as "red" or "small star",
    the form of search queries and of PatchDis's class names."""
    index = 0
    while True:
        rng = random.Random(f"pretrain-text-{split}-{seed}-{index}")
        shapes = sample_layout(rng, 224)
        if rng.random() < SHORT_QUERY_SHARE:
            yield short_query(rng.choice(shapes), rng)
        else:
            yield rng.choice(captions(shapes, rng))
        index += 1


def shape_word_targets(texts: list[str], tokenizer: Any, vocabulary: Vocabulary) -> torch.Tensor:
    """(B, V) 0/1: the vocabulary words of each caption's shape words."""
    return (
        bag_of_words([" ".join(shape_words(t)) for t in texts], tokenizer, vocabulary) > 0
    ).float()


def _encoder(cfg: TextConfig, llm: Any, tokenizer: Any, vocabulary: Vocabulary) -> TextEncoder:
    """A text encoder over ``llm`` as it is now (full fine-tuning: no LoRA wrapping)."""
    return TextEncoder(cfg.model_copy(update={"train_mode": "full"}), llm, tokenizer, vocabulary)


def text_losses(
    encoder: TextEncoder, llm: Any, texts: list[str], vocabulary: Vocabulary
) -> tuple[torch.Tensor, torch.Tensor]:
    """(language-model loss, shape-word binary cross-entropy) of a batch of captions."""
    batch = encoder.tokenize(texts)
    hidden = llm.model(**batch, use_cache=False).last_hidden_state
    logits = llm.lm_head(hidden[:, :-1])
    labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    codebook = llm.lm_head.weight[torch.as_tensor(vocabulary.token_ids)]
    scores = hidden[:, -1] @ codebook.T
    targets = shape_word_targets(texts, encoder.tokenizer, vocabulary)
    lexical = F.binary_cross_entropy_with_logits(scores, targets, reduction="none").sum(-1).mean()
    return lm, lexical


@torch.no_grad()
def lexical_check(
    encoder: TextEncoder, vocabulary: Vocabulary, texts: list[str]
) -> dict[str, float]:
    """How the text vectors use words, at the paper's threshold: active words, the share of each
    caption's top-k words that are its k shape words, the weight share on other words."""
    vectors = torch.cat([encoder(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    targets = shape_word_targets(texts, encoder.tokenizer, vocabulary).bool()
    kept = vectors * (vectors > 1 / math.sqrt(vectors.shape[1]))
    k = targets.sum(1)
    order = vectors.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(vectors.shape[1]).expand_as(order))
    in_top = (targets & (ranks < k[:, None])).sum(1)
    return {
        "active_words": round(float((kept > 0).sum(1).float().mean()), 2),
        "top_words_are_shape_words": round(float((in_top / k.clamp_min(1)).mean()), 4),
        "weight_off_shape_words": round(float(kept[~targets].sum() / kept.sum()), 4),
    }


def pretrain_text_backbone(
    llm: Any,
    tokenizer: Any,
    vocabulary: Vocabulary,
    cfg: TextConfig,
    settings: TextPretrainSettings,
    *,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``llm`` (a ``LlamaForCausalLM``) in place; returns timing and a held-out check."""
    torch.manual_seed(seed)
    encoder = _encoder(cfg, llm, tokenizer, vocabulary).train()
    optimizer = torch.optim.AdamW(
        llm.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.1
    )
    stream = caption_stream(seed, TRAIN_SPLIT)
    start = time.perf_counter()
    for _ in tqdm(
        range(settings.steps),
        desc="pretraining the text backbone",
        disable=not progress,
        leave=False,
    ):
        texts = [next(stream) for _ in range(settings.batch_size)]
        lm, lexical = text_losses(encoder, llm, texts, vocabulary)
        loss = lm + settings.lexical_weight * lexical
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    llm.eval()
    check_stream = caption_stream(seed, CHECK_SPLIT)
    check = lexical_check(
        _encoder(cfg, llm, tokenizer, vocabulary).eval(),
        vocabulary,
        [next(check_stream) for _ in range(256)],
    )
    logger.info("text backbone pretrained in %.0f s; held-out %s", seconds, check)
    return {
        "seconds": round(seconds, 1),
        "final_lm_loss": round(lm.item(), 4),
        "final_lexical_loss": round(lexical.item(), 4),
        "heldout": check,
    }
