"""PatchDis (the paper's interpretability metric): do patch-level lexical vectors name what is in each patch?

For each class, the text lexical vector of its name; every image patch is assigned to the class
whose vector has the largest dot product with the patch's lexical vector (``patch_vectors``);
the ground-truth mask is down-sampled to the patch grid by majority vote (ties go to the lower
class index, i.e. to background); IoU per class is accumulated over the whole set and averaged
over the classes present in the ground truth.

Background (*default*, the paper does not say): ``ignore`` leaves patches whose ground truth is
background out of the count, so the metric asks which of the classes an object patch shows;
``class`` adds a "background" class with the text vector of the word ``background``.
"""

from __future__ import annotations

from typing import Any

import torch


def majority_labels(masks: torch.Tensor, grid: int, num_values: int) -> torch.Tensor:
    """(B, S, S) integer label maps -> (B, grid, grid) majority label of each patch."""
    b, h, w = masks.shape
    if h != w or h % grid:
        raise ValueError(f"mask size {h}x{w} does not divide into a {grid}x{grid} patch grid")
    p = h // grid
    blocks = masks.long().view(b, grid, p, grid, p).permute(0, 1, 3, 2, 4).reshape(-1, p * p)
    counts = torch.zeros(blocks.shape[0], num_values, dtype=torch.long)
    counts.scatter_add_(1, blocks.clamp(0, num_values - 1), torch.ones_like(blocks))
    return counts.argmax(dim=1).view(b, grid, grid)  # argmax takes the first maximum


class PatchDis:
    """Accumulates per-class intersections and unions over batches of one mask kind."""

    def __init__(
        self, class_names: list[str], class_vectors: torch.Tensor, background: str = "ignore"
    ) -> None:
        """``class_vectors``: one row per foreground class, plus a last "background" row when
        ``background == "class"``. Foreground class ``i`` is mask value ``i + 1``."""
        if background not in ("ignore", "class"):
            raise ValueError(f"background must be 'ignore' or 'class', got {background!r}")
        k = len(class_names) + (background == "class")
        if class_vectors.shape[0] != k:
            raise ValueError(f"{class_vectors.shape[0]} class vectors for {k} classes")
        self.names = list(class_names)
        self.background = background
        self.vectors = class_vectors.float()
        self.intersection = torch.zeros(len(class_names) + 1, dtype=torch.long)
        self.union = torch.zeros_like(self.intersection)
        self.ground_truth = torch.zeros_like(self.intersection)

    def predict(self, patch_vectors: torch.Tensor) -> torch.Tensor:
        """(B, L, V) patch vectors -> (B, L) mask values (1..K, or 0 for the background class)."""
        scores = patch_vectors.float() @ self.vectors.to(patch_vectors.device).T
        best = scores.argmax(dim=-1).cpu()
        if self.background == "class":  # the last row is background
            return torch.where(best == len(self.names), 0, best + 1)
        return best + 1

    def update(self, patch_vectors: torch.Tensor, masks: torch.Tensor) -> None:
        b, length, _ = patch_vectors.shape
        grid = round(length**0.5)
        truth = majority_labels(masks, grid, len(self.names) + 1).view(b, -1)
        pred = self.predict(patch_vectors)
        valid = (
            truth > 0 if self.background == "ignore" else torch.ones_like(truth, dtype=torch.bool)
        )
        n = len(self.names) + 1
        truth, pred = truth[valid], pred[valid]
        self.ground_truth += torch.bincount(truth, minlength=n)
        hits = torch.bincount(truth[truth == pred], minlength=n)
        self.intersection += hits
        self.union += torch.bincount(truth, minlength=n) + torch.bincount(pred, minlength=n) - hits

    def result(self) -> dict[str, Any]:
        first = 1 if self.background == "ignore" else 0
        names = ["background", *self.names]
        per_class = {
            names[c]: float(self.intersection[c]) / float(self.union[c])
            for c in range(first, len(names))
            if self.ground_truth[c] > 0
        }
        miou = sum(per_class.values()) / len(per_class) if per_class else float("nan")
        return {
            "miou": miou,
            "classes_present": len(per_class),
            "chance_miou_uniform": _uniform_chance(self.ground_truth[first:], len(names) - first),
            "patches": int(self.ground_truth[first:].sum()),
            "per_class": per_class,
        }


def _uniform_chance(truth_counts: torch.Tensor, k: int) -> float:
    """Expected mIoU of assigning every patch to a uniformly random class (for reference)."""
    total = float(truth_counts.sum())
    if total == 0:
        return float("nan")
    ious = []
    for count in truth_counts.tolist():
        if count > 0:
            hit = count / k
            ious.append(hit / (count + total / k - hit))
    return sum(ious) / len(ious)
