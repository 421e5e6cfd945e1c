"""Training objectives (contrastive loss and sparsity regularisers), each returning named parts.

- Symmetric InfoNCE over image and text lexical vectors with CLIP's learnable temperature, with
  negatives gathered from every rank. The gather copies other ranks' rows without gradient and
  puts the local slice back so that it keeps its own (open_clip's scheme); every rank then
  computes the loss of the whole global batch. Summing the per-rank gradients gives exactly the
  single-process gradient. The temperature is the same tensor on every rank, so its gradient is
  scaled by 1/world size (value unchanged) to keep that rule for every parameter. A DDP loop,
  which *averages* gradients, must therefore scale its backward loss by the world size
  (``training`` does).
- FLOPs regulariser (SPLADE's; the baseline the paper argues against): ``sum_j (mean_i s_ij)^2``.
- Overuse penalty, the paper's contribution. Its exact formula is an image in the paper; our
  reconstruction (a documented default): ``p_j = mean_i s_ij``, ``L = sum_j p_j^3 / sum_j p_j``,
  the FLOPs term of each word weighted by its share of the activation mass, so words switched on
  across the batch pay much more than words used by a few samples.
- Regulariser weights ramp in quadratically over the first steps (SPLADE's practice).
- Lexical grounding (OUR default for randomly initialised text models; the paper has no such
  term). The paper's words mean something because a *pretrained* Llama's last hidden state,
  dotted with its lm_head rows, already predicts the caption's words; a random tiny Llama trained
  by the contrastive loss alone spreads its weight over arbitrary words. The term reads the text
  vector, scaled by 100 (CLIP's temperature cap), as logits over the vocabulary and takes the
  cross-entropy of their softmax against the caption's own words (``model.bag_of_words``, as a
  distribution), averaged over the captions that have vocabulary words: a word-prediction loss
  like the LLM's own, on ``s_txt``. It asks for a *ranking* (caption words highest), not for a
  concentrated vector, which a frozen random codebook cannot give (``docs/lab-notes.md`` has
  the alternatives that were tried). Images follow through the contrastive loss. Off (weight 0) by default; the ``tiny-shapes`` training
  preset turns it on. The bag of words is gathered like the vectors, so every rank computes the
  global-batch value.
- Image grounding (ours, off by default; on in ``tiny-shapes``): the same cross-entropy, at a
  lower scale (``IMAGE_GROUNDING_SCALE``), on the *image* vector, against the caption's content words (its bag-of-words words that its text
  vector activates, equally weighted; no gradient to the text). The contrastive loss alone lets
  an image be told apart by its easiest words: on shapes the colours, whose every patch says
  "red", so a red triangle weighed red 0.93 and triangle 0.29 and "a red circle" ranked red
  non-circles above red circles. This term asks each image for *all* of what its caption says,
  in equal measure (measurements: ``docs/lab-notes.md``).

Only ``torch.distributed`` collectives are used here; process-group setup lives in ``training``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

Penalty = Literal["overuse", "flops", "none"]


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank; only the local slice carries gradient."""
    if _world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def replicated(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, its gradient divided by the world size: per-rank gradients then sum to the
    single-process gradient, as they do for the encoders' outputs under the gather."""
    world = _world_size()
    if world == 1:
        return x
    return x / world + (x - x / world).detach()


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, max_scale: float = 100.0
) -> torch.Tensor:
    """Symmetric InfoNCE on already-gathered (N, V) image and text vectors; pair i matches i."""
    if image.shape != text.shape:
        raise ValueError(f"image {tuple(image.shape)} and text {tuple(text.shape)} do not pair up")
    if image.shape[0] == 0:
        raise ValueError("empty batch")
    scale = logit_scale.exp().clamp(max=max_scale)
    logits = scale * image @ text.T
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def flops_penalty(s: torch.Tensor) -> torch.Tensor:
    """SPLADE's FLOPs regulariser: ``sum_j (mean_i s_ij)^2``."""
    return s.mean(dim=0).pow(2).sum()


def overuse_penalty(s: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``sum_j p_j^3 / sum_j p_j`` with ``p_j = mean_i s_ij`` (our reconstruction, see above)."""
    p = s.mean(dim=0)
    return p.pow(3).sum() / p.sum().clamp_min(eps)


def grounding_loss(
    text: torch.Tensor, bow: torch.Tensor, scale: float = 100.0, eps: float = 1e-12
) -> torch.Tensor:
    """Cross-entropy of ``softmax(scale * s_txt)`` against the caption's word distribution, mean
    over rows with a non-empty bag of words (ours, see above)."""
    if text.shape != bow.shape:
        raise ValueError(f"text {tuple(text.shape)} and bow {tuple(bow.shape)} do not pair up")
    bow = bow.to(text.dtype)
    mass = bow.sum(dim=-1, keepdim=True)
    target = bow / mass.clamp_min(eps)  # word counts as a distribution
    has_words = (mass.squeeze(-1) > 0).to(text.dtype)
    per_row = -(target * F.log_softmax(scale * text, dim=-1)).sum(dim=-1)
    return (per_row * has_words).sum() / has_words.sum().clamp_min(1.0)


# The image term's logit scale. At the text term's 100 it is met by ranking alone, and image
# vectors go flat (many active words, most of their mass on words in no caption); at 10 the
# caption's words must lead the rest by a wide margin, which only a concentrated vector gives
# (the runs: docs/lab-notes.md).
IMAGE_GROUNDING_SCALE = 10.0


def image_grounding_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    bow: torch.Tensor,
    scale: float = IMAGE_GROUNDING_SCALE,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Cross-entropy of ``softmax(scale * s_img)`` against the caption's *content* words,
    uniformly: the words of its bag of words that its own text vector activates above the
    paper's threshold ``1/sqrt(V)`` (no gradient through the text). Mean over rows with such
    words (ours, see above)."""
    if not image.shape == text.shape == bow.shape:
        raise ValueError(
            f"image {tuple(image.shape)}, text {tuple(text.shape)} and bow {tuple(bow.shape)} "
            "do not pair up"
        )
    words = (bow > 0) & (text.detach() > image.shape[-1] ** -0.5)
    target = words.to(image.dtype)
    count = target.sum(dim=-1, keepdim=True)
    has_words = (count.squeeze(-1) > 0).to(image.dtype)
    target = target / count.clamp_min(eps)
    per_row = -(target * F.log_softmax(scale * image, dim=-1)).sum(dim=-1)
    return (per_row * has_words).sum() / has_words.sum().clamp_min(1.0)


PENALTIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "overuse": overuse_penalty,
    "flops": flops_penalty,
}


class QuadraticWarmup:
    """Regulariser weight ``lam * min(1, step / warmup_steps) ** 2``."""

    def __init__(self, weight: float, warmup_steps: int):
        if weight < 0 or warmup_steps < 0:
            raise ValueError("weight and warmup_steps must be non-negative")
        self.weight = weight
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.weight
        return self.weight * min(1.0, step / self.warmup_steps) ** 2


class LexVLALoss:
    """``L = InfoNCE + lam_img(step) * R(S_img) + lam_txt(step) * R(S_txt) [+ g * G(S_txt, BoW)]
    [+ g_img * G_img(S_img, S_txt, BoW)]`` over the global batch; the grounding parts (not
    ramped) only if their weight is positive."""

    def __init__(
        self,
        penalty: Penalty = "overuse",
        image_weight: float = 1e-3,
        text_weight: float = 1e-3,
        warmup_steps: int = 0,
        max_logit_scale: float = 100.0,
        grounding_weight: float = 0.0,
        image_grounding_weight: float = 0.0,
    ):
        if grounding_weight < 0 or image_grounding_weight < 0:
            raise ValueError("grounding_weight and image_grounding_weight must be non-negative")
        if penalty not in (*PENALTIES, "none"):
            raise ValueError(f"unknown penalty {penalty!r}; choose overuse, flops or none")
        self.penalty = penalty
        self.image_weight = QuadraticWarmup(image_weight, warmup_steps)
        self.text_weight = QuadraticWarmup(text_weight, warmup_steps)
        self.max_logit_scale = max_logit_scale
        self.grounding_weight = grounding_weight
        self.image_grounding_weight = image_grounding_weight

    @property
    def needs_bow(self) -> bool:
        """Whether a call needs the captions' bag-of-words vectors (``bow``)."""
        return self.grounding_weight > 0 or self.image_grounding_weight > 0

    def __call__(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        step: int = 0,
        bow: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named parts and their sum ``loss``; ``bow`` (local rows, like ``text``) if grounding."""
        if self.needs_bow and bow is None:
            raise ValueError("grounding needs the captions' bag of words (bow=...)")
        image_all = gather_with_local_grad(image)
        text_all = gather_with_local_grad(text)
        scale = replicated(logit_scale)
        parts = {
            "contrastive_loss": contrastive_loss(image_all, text_all, scale, self.max_logit_scale)
        }
        if self.penalty != "none":
            reg = PENALTIES[self.penalty]
            parts[f"image_{self.penalty}_loss"] = self.image_weight(step) * reg(image_all)
            parts[f"text_{self.penalty}_loss"] = self.text_weight(step) * reg(text_all)
        if self.needs_bow:
            assert bow is not None
            bow_all = gather_with_local_grad(bow.to(text.device))
            if self.grounding_weight > 0:
                parts["text_grounding_loss"] = self.grounding_weight * grounding_loss(
                    text_all, bow_all
                )
            if self.image_grounding_weight > 0:
                parts["image_grounding_loss"] = self.image_grounding_weight * image_grounding_loss(
                    image_all, text_all, bow_all
                )
        total = torch.stack(list(parts.values())).sum()
        return {"loss": total, **parts}
