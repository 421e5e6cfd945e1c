"""Evaluation of a LexVLA checkpoint as the paper evaluates it: zero-shot retrieval and PatchDis.

Modules: ``datasets`` (shapes, manifests, Karpathy JSON, COCO masks), ``encode`` (one pass over
the images), ``retrieval`` (R@1/5/10 both ways over a sparsity sweep), ``patchdis`` (patch-level
mIoU), ``coco_masks`` (polygon and RLE decoding), ``vocabulary_usage`` and ``run`` (``evaluate``).
"""

from training.evaluation.run import evaluate

__all__ = ["evaluate"]
