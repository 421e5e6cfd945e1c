"""What ``lexvla demo`` measures on its held-out images, as numbers (``demo_metrics``), and how it
prints them (``print_metrics``). The demo test asserts on the numbers, never on printed text.

- retrieval recall over the held-out captions (``training.evaluation``), PatchDis over shape
  kinds and colours, and how the vectors use the vocabulary (active words, activation mass on
  words that occur in no caption);
- text-to-image R@1 of each query mode (``query_modes``: the text encoder, the query table,
  the query's own words) at the checkpoint's threshold, the same measure as the first;
- the query "a red circle" through the service itself: how many of the top 5 images show a red
  circle (and how many show something red and a circle: a bag of words cannot bind a colour to
  a kind, so "a red heart and a brown circle" has every word "a red circle" asks for), and each
  hit's two largest word contributions; and the same with ``bind`` (re-ranked by the best patch
  for the whole query: the words at one place);
- the query "a green triangle -star": how many of its top 10 show a star (the filter's job);
- how strong each shape word is on the images that show that shape, in the stored (sparse)
  vectors the index and any word filter read: its rank among the image's words and its weight
  relative to the image's largest, against the same weight on images without that shape.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from training.data.shape_language import SHAPE_KINDS

RED_CIRCLE = "a red circle"
NO_STAR = "a green triangle -star"  # "-star": the image-side filter drops images that have "star"


def evaluate_retrieval(model: Any, manifest: Path) -> dict[str, Any]:
    from training.config import EvalSettings
    from training.evaluation.run import evaluate

    settings = EvalSettings(data=str(manifest), patchdis="shapes:200", top_k=[64, 16])
    return evaluate(model, settings)


QUERY_MODES = {"model": "llm", "table": "table", "words": "bow"}  # service mode -> text side


def query_modes(model: Any, manifest: Path) -> dict[str, dict[str, float]]:
    """Text-to-image R@1 (percent) of every query mode the checkpoint has, on the held-out
    captions at the checkpoint's threshold (``evaluate_retrieval``'s ``threshold`` setting)."""
    import torch

    from training.evaluation.datasets import eval_dataset
    from training.evaluation.encode import encode_images, encode_texts
    from training.evaluation.retrieval import retrieval_scores, sparse_rows

    sparsity = model.config.sparsity
    dataset = eval_dataset(str(manifest), image_size=model.config.image.image_size)
    out = {}
    with torch.inference_mode():
        encoded = encode_images(model, dataset)
        images = sparse_rows(encoded.images, sparsity.threshold, sparsity.top_k)
        for mode, side in QUERY_MODES.items():
            if mode == "table" and model.query_table is None:
                continue
            texts = encode_texts(model, encoded.captions, side)
            rows = sparse_rows(texts, sparsity.threshold, sparsity.top_k)
            scores = retrieval_scores(images, rows, encoded.text_image)
            out[mode] = {"t2i_r1": scores["text_to_image"]["R@1"]}
    return out


WORD_BUDGETS = (None, 8, 6, 4)  # --max-words of the indexing job (None: all words)


def word_budgets(
    model: Any, manifest: Path, budgets: tuple[int | None, ...] = WORD_BUDGETS
) -> dict[str, float]:
    """Text-to-image R@1 (percent, model-mode queries) when each held-out image keeps only its
    K heaviest words (``model.sparsify.keep_heaviest``, what ``--max-words K`` stores), by K
    ("all": no budget)."""
    import torch

    from model.sparsify import keep_heaviest
    from training.evaluation.datasets import eval_dataset
    from training.evaluation.encode import encode_images, encode_texts
    from training.evaluation.retrieval import retrieval_scores, sparse_rows

    sparsity = model.config.sparsity
    dataset = eval_dataset(str(manifest), image_size=model.config.image.image_size)
    with torch.inference_mode():
        encoded = encode_images(model, dataset)
        images = sparse_rows(encoded.images, sparsity.threshold, sparsity.top_k)
        texts = encode_texts(model, encoded.captions, QUERY_MODES["model"])
        rows = sparse_rows(texts, sparsity.threshold, sparsity.top_k)
    out = {}
    for k in budgets:
        kept = images if k is None else keep_heaviest(images, k)
        scores = retrieval_scores(kept, rows, encoded.text_image)
        out["all" if k is None else str(k)] = scores["text_to_image"]["R@1"]
    return out


def red_circle_check(
    client: Any, truth: dict[str, list[dict[str, str]]], bind: bool = False
) -> dict[str, Any]:
    """The top 5 of "a red circle" through ``/search`` (``bind``: re-ranked by where the words
    are, ``service.search.binding``): which show a red circle, top words."""
    found = client.post("/search", json={"query": RED_CIRCLE, "top_k": 5, "bind": bind})
    found.raise_for_status()
    hits = []
    for hit in found.json()["hits"]:
        matched = sorted(hit["matched"], key=lambda m: -m["contribution"])
        shapes = truth.get(hit["id"], [])
        hits.append(
            {
                "id": hit["id"],
                "red_circle": any(s["kind"] == "circle" and s["colour"] == "red" for s in shapes),
                # what a bag of words can see: something red and a circle, maybe not one shape
                "red_and_circle": any(s["colour"] == "red" for s in shapes)
                and any(s["kind"] == "circle" for s in shapes),
                "shapes": len(shapes),
                "top_words": [m["word"] for m in matched[:2]],
            }
        )
    return {
        "hits": hits,
        "red_circles_in_top5": sum(h["red_circle"] for h in hits),
        "red_and_circle_in_top5": sum(h["red_and_circle"] for h in hits),
        "red_and_circle_lead_every_hit": all(
            set(h["top_words"]) == {"red", "circle"} for h in hits
        ),
    }


def excluded_star_check(client: Any, truth: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """The top 10 of "a green triangle -star" through ``/search``: how many show a star (the
    filter's job: none), and how many show a green triangle (the ranking's)."""
    found = client.post("/search", json={"query": NO_STAR, "top_k": 10})
    found.raise_for_status()
    shapes = [truth.get(hit["id"], []) for hit in found.json()["hits"]]
    return {
        "hits": len(shapes),
        "with_star": sum(any(s["kind"] == "star" for s in image) for image in shapes),
        "green_triangles": sum(
            any(s["kind"] == "triangle" and s["colour"] == "green" for s in image)
            for image in shapes
        ),
    }


def shape_word_strength(
    ids: list[str], rows: Any, truth: dict[str, list[dict[str, str]]], vocabulary: Any
) -> dict[str, dict[str, float]]:
    """Per shape kind: rank of its word among the words of images that show it (1 = heaviest;
    absent counts as the vocabulary size), and its weight relative to the image's heaviest word
    on images with the shape (5th percentile) and without it (95th percentile)."""
    out: dict[str, dict[str, float]] = {}
    rows = rows.tocsr()
    for kind in SHAPE_KINDS:
        column = vocabulary.index(kind)
        ranks, with_shape, without = [], [], []
        for i, image_id in enumerate(ids):
            weights = rows.data[rows.indptr[i] : rows.indptr[i + 1]]
            words = rows.indices[rows.indptr[i] : rows.indptr[i + 1]]
            own = float(weights[words == column].sum()) if len(weights) else 0.0
            ratio = own / float(weights.max()) if len(weights) else 0.0
            if any(s["kind"] == kind for s in truth.get(image_id, [])):
                ranks.append(1 + int((weights > own).sum()) if own > 0 else len(vocabulary))
                with_shape.append(ratio)
            else:
                without.append(ratio)
        if not ranks:
            continue
        out[kind] = {
            "images": len(ranks),
            "median_rank": float(median(ranks)),
            "top3_share": float(np.mean(np.array(ranks) <= 3)),
            "weight_ratio_p05": float(np.percentile(with_shape, 5)),
            "other_images_weight_ratio_p95": float(np.percentile(without, 95)) if without else 0.0,
        }
    return out


def demo_metrics(
    model: Any, manifest: Path, store: Path, client: Any, truth: dict[str, list[dict[str, str]]]
) -> dict[str, Any]:
    """Every number the demo reports (see the module docstring); JSON-safe."""
    from indexer.store import CorpusStore

    result = evaluate_retrieval(model, manifest)
    threshold = result["retrieval"]["threshold"]
    usage = result["vocabulary"]
    vocabulary_size = len(model.vocabulary)
    with CorpusStore.open(store, expected_vocabulary=model.vocabulary) as opened:
        ids, rows = opened.vectors()
    summary = {
        "text_to_image_r1": threshold["text_to_image"]["R@1"],
        "image_to_text_r1": threshold["image_to_text"]["R@1"],
        "patchdis_kind_miou": result["patchdis"]["kind"]["miou"],
        "patchdis_colour_miou": result["patchdis"]["colour"]["miou"],
        "image_mass_off_captions": usage["image_false_activation_share"],
        "text_mass_off_captions": usage["text_false_activation_share"],
        "active_words_per_image": usage["active_words_image"],
        "active_share_per_image": usage["active_words_image"] / vocabulary_size,
        "vocabulary_size": vocabulary_size,
    }
    return result | {
        "summary": summary,
        "red_circle": red_circle_check(client, truth),
        "red_circle_bound": red_circle_check(client, truth, bind=True),
        "no_star": excluded_star_check(client, truth),
        "shape_words": shape_word_strength(ids, rows, truth, model.vocabulary),
        "query_modes": query_modes(model, manifest),
        "word_budgets": word_budgets(model, manifest),
    }


def _print_retrieval(retrieval: dict[str, Any]) -> None:
    images, texts = retrieval.get("images"), retrieval.get("texts")
    print(f"retrieval over {images} images and {texts} captions (R@1 / R@5 / R@10, %):")
    for setting, scores in retrieval.items():
        if not isinstance(scores, dict) or "text_to_image" not in scores:
            continue
        t2i, i2t = scores["text_to_image"], scores["image_to_text"]
        print(
            f"  {setting:10s} text->image {t2i['R@1']:5.1f} {t2i['R@5']:5.1f} {t2i['R@10']:5.1f}"
            f"   image->text {i2t['R@1']:5.1f} {i2t['R@5']:5.1f} {i2t['R@10']:5.1f}"
            f"   active words: image {scores['active_words_image']:.0f},"
            f" text {scores['active_words_text']:.0f}"
        )


def print_metrics(metrics: dict[str, Any]) -> None:
    """The numbers of ``demo_metrics`` as a few readable lines."""
    _print_retrieval(metrics.get("retrieval", {}))
    for kind, score in (metrics.get("patchdis") or {}).items():
        print(
            f"PatchDis ({kind}): mIoU {score['miou']:.3f} over {score['classes_present']} classes"
            f" (uniform chance {score['chance_miou_uniform']:.3f})"
        )
    summary = metrics["summary"]
    print(
        f"active words per image: {summary['active_words_per_image']:.1f} of "
        f"{summary['vocabulary_size']} ({summary['active_share_per_image']:.1%}); activation "
        f"mass on words in no caption: images {summary['image_mass_off_captions']:.1%}, "
        f"texts {summary['text_mass_off_captions']:.1%}"
    )
    modes = metrics.get("query_modes", {})
    print(
        "text->image R@1 by query mode: "
        + ", ".join(f"{mode} {score['t2i_r1']:.1f}" for mode, score in modes.items())
    )
    check = metrics["red_circle"]
    print(
        f'"{RED_CIRCLE}": {check["red_circles_in_top5"]} of the top 5 show a red circle '
        f"({check['red_and_circle_in_top5']} something red and a circle); their two largest "
        "contributions: " + "; ".join("+".join(h["top_words"]) for h in check["hits"])
    )
    bound = metrics["red_circle_bound"]
    print(
        f'"{RED_CIRCLE}" with "bind": true (re-ranked by where its words are): '
        f"{bound['red_circles_in_top5']} of the top 5 show a red circle"
    )
    stars = metrics["no_star"]
    print(
        f'"{NO_STAR}": {stars["with_star"]} of the top {stars["hits"]} show a star, '
        f"{stars['green_triangles']} a green triangle"
    )
    words = metrics["shape_words"]
    print(
        "shape words on their images (median rank, weight vs the image's heaviest word: 5th "
        "percentile with the shape / 95th without):"
    )
    print(
        "  "
        + "; ".join(
            f"{kind} {w['median_rank']:.0f}, {w['weight_ratio_p05']:.2f}/"
            f"{w['other_images_weight_ratio_p95']:.2f}"
            for kind, w in words.items()
        )
    )
