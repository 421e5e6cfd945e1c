"""Evaluation: recall and its tie rule, sparsity sweep, PatchDis, COCO masks, vocabulary usage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.sparsify import sparsify
from training.cli import main
from training.evaluation.coco_masks import (
    CocoMasks,
    decode_polygons,
    decode_rle,
    rle_counts_from_string,
)
from training.evaluation.datasets import KarpathySplit, eval_dataset, mask_classes
from training.evaluation.patchdis import PatchDis, majority_labels
from training.evaluation.retrieval import (
    ranks_image_to_text,
    ranks_text_to_image,
    retrieval_scores,
    retrieval_sweep,
    sparse_rows,
)
from training.evaluation.vocabulary_usage import caption_word_matrix, vocabulary_usage


def _one_hot(indices: list[int], size: int = 4) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[indices]


def test_recall_counts_any_caption_and_ties_against_the_query() -> None:
    images = _one_hot([0, 1, 2])
    texts = _one_hot([0, 0, 2, 2])  # captions of images 0, 0, 1, 2; the third points at image 2
    owner = np.array([0, 0, 1, 2])
    np.testing.assert_array_equal(ranks_text_to_image(images, texts, owner), [0, 0, 2, 0])
    # image 1: every other text ties with its caption at 0; image 2: text 2 ties with its caption
    np.testing.assert_array_equal(ranks_image_to_text(images, texts, owner), [0, 3, 1])
    scores = retrieval_scores(images, texts, owner)
    assert scores["text_to_image"]["R@1"] == pytest.approx(75.0)
    assert scores["image_to_text"] == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0})
    zeros = retrieval_scores(np.zeros((3, 4)), np.zeros((4, 4)), owner)
    assert zeros["text_to_image"]["R@1"] == 0.0 and zeros["image_to_text"]["R@1"] == 0.0


def test_sparsity_sweep_matches_model_sparsify() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.rand(6, 50, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.rand(9, 50, generator=g), dim=-1)
    rows = sparse_rows(images, None, 5, chunk=4)
    assert (rows != sparsify(images, None, 5)).nnz == 0
    owner = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2])
    sweep = retrieval_sweep(images, texts, owner, top_ks=[5, 2, 100])
    assert sweep["threshold_value"] == pytest.approx(50**-0.5)
    assert {"dense", "threshold", "top-5", "top-2"} <= set(sweep) and "top-100" not in sweep
    assert sweep["top-2"]["active_words_image"] == 2.0
    assert sweep["dense"]["active_words_text"] == 50.0
    assert sweep["threshold"]["active_words_image"] == pytest.approx(
        np.diff(sparsify(images).indptr).mean()
    )


def test_majority_vote_and_patchdis_miou() -> None:
    mask = torch.zeros(1, 4, 4, dtype=torch.uint8)
    mask[0, :2, :2] = 1  # patch (0, 0): all class 1
    mask[0, :2, 2:] = torch.tensor([[2, 2], [2, 0]], dtype=torch.uint8)  # 3 of 4 are class 2
    mask[0, 2:, :2] = torch.tensor([[1, 1], [0, 0]], dtype=torch.uint8)  # tie -> background (0)
    labels = majority_labels(mask, 2, 3)
    assert labels.tolist() == [[[1, 2], [0, 0]]]
    # patch vectors along words 0..2; class vectors: class 1 = word 0, class 2 = word 1
    classes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    patches = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    scorer = PatchDis(["circle", "square"], classes)
    scorer.update(patches, mask)
    result = scorer.result()  # foreground patches: (0,0) circle right, (0,1) square called circle
    assert result["per_class"] == {"circle": 0.5, "square": 0.0}
    assert result["miou"] == 0.25 and result["patches"] == 2
    with_background = torch.cat([classes, torch.tensor([[0.0, 0.0, 1.0]])])
    scorer = PatchDis(["circle", "square"], with_background, background="class")
    scorer.update(patches, mask)
    per_class = scorer.result()["per_class"]  # background: (1,1) right, (1,0) called square
    assert per_class == {"background": 0.5, "circle": 0.5, "square": 0.0}


def _encode_counts(counts: list[int]) -> str:
    """COCO's compressed RLE string (the inverse of the decoder, written for this test)."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        while True:
            char = x & 0x1F
            x >>= 5
            done = (x == 0 and not char & 0x10) or (x == -1 and char & 0x10)
            out.append(chr((char if done else char | 0x20) + 48))
            if done:
                break
    return "".join(out)


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.ravel()  # column-major
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    return [*counts, run]


def test_rle_decoding_compressed_and_uncompressed() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = (rng.random((7, 11)) < rng.random()).astype(np.uint8)
        counts = _runs(mask)
        np.testing.assert_array_equal(decode_rle(counts, 7, 11), mask)
        text = _encode_counts(counts)
        assert rle_counts_from_string(text) == counts
        np.testing.assert_array_equal(decode_rle(text, 7, 11), mask)
    with pytest.raises(ValueError, match="sum"):
        decode_rle([3, 4], 3, 3)
    square = decode_polygons([[2, 2, 8, 2, 8, 8, 2, 8]], 12, 12)
    assert square[5, 5] == 1 and square[0, 0] == 0 and 36 <= square.sum() <= 49


def test_coco_masks_paint_small_objects_over_large_ones(tmp_path: Path) -> None:
    (tmp_path / "val2017").mkdir()
    Image.new("RGB", (20, 10), (90, 90, 90)).save(tmp_path / "val2017" / "a.jpg")
    small = {"counts": _runs(np.pad(np.ones((2, 2), np.uint8), ((4, 4), (9, 9)))), "size": [10, 20]}
    annotations = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 10, "width": 20}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"image_id": 7, "category_id": 18, "area": 4, "segmentation": small},
            {
                "image_id": 7,
                "category_id": 1,
                "area": 100,
                "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]],
            },
        ],
    }
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(annotations))
    dataset = eval_dataset(f"coco:{path}", image_size=14)  # the image folder is guessed
    assert mask_classes(dataset) == {"coco": ["person", "dog"]}
    assert isinstance(dataset, CocoMasks)
    labels = dataset[0]["masks"]["coco"]
    assert labels[5, 10] == 2 and labels[0, 0] == 1  # dog over person


def test_karpathy_split_keeps_the_test_images(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    data = {
        "images": [
            {"filename": "x.jpg", "split": "test", "sentences": [{"raw": "A dog ."}, {"raw": "b"}]},
            {"filename": "y.jpg", "split": "train", "sentences": [{"raw": "c"}]},
        ]
    }
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    dataset = KarpathySplit(tmp_path / "dataset_flickr30k.json")
    assert len(dataset) == 1
    item = dataset[0]
    assert isinstance(item, dict) and item["captions"] == ["A dog .", "b"]


def test_vocabulary_usage_and_false_activations(tiny_model) -> None:
    vocab, tokenizer = tiny_model.vocabulary, tiny_model.text.tokenizer
    words = caption_word_matrix(["a red circle", "a blue square"], tokenizer, vocab)
    assert words[0, vocab.index("red")] == 1 and words[0, vocab.index("blue")] == 0
    images = np.zeros((2, len(vocab)), dtype=np.float32)
    images[0, vocab.index("red")] = 0.6
    images[0, vocab.index("dog")] = 0.2  # in no caption
    images[1, vocab.index("red")] = 0.2  # another image's word
    images[1, vocab.index("square")] = 0.6
    rows = sparsify(images, 0.0)
    usage = vocabulary_usage(rows, rows, words, np.array([0, 1]), vocab, top=3)
    assert usage["active_words_image"] == 2.0
    assert usage["image_false_activation_share"] == pytest.approx(0.2 / 1.6)
    assert usage["image_off_own_captions_share"] == pytest.approx(0.4 / 1.6)
    assert usage["most_frequent_image_words"][0] == {"word": "red", "share": 1.0}


def test_eval_cli_on_the_flickr_sample(tiny_checkpoint: Path, flickr_sample: Path, capsys) -> None:
    argv = [
        "eval",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(flickr_sample / "captions.csv"),
    ]
    assert main([*argv, "--max-images", "6", "--top-k", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    retrieval = result["retrieval"]
    assert retrieval["images"] == 6 and retrieval["texts"] == 30  # five captions per image
    assert retrieval["top-64"]["active_words_text"] == 64.0
    assert "patchdis" not in result and result["vocabulary"]["caption_vocabulary_size"] > 10
    assert main(["eval", "--checkpoint", str(tiny_checkpoint)]) == 2  # nothing to evaluate
