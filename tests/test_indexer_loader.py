"""indexer.loader: decoding in DataLoader workers gives the in-process result and the model's input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.job import IndexJob
from indexer.loader import ChunkTag, PrepareImages, image_loader
from indexer.runner import run_index_job
from indexer.store import CorpusStore
from model.data import SourceItem, iter_source
from model.preprocessing import eval_transform, normalize, upright_rgb


def _photo(seed: int, size=(90, 70)) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        out, format="JPEG"
    )
    return out.getvalue()


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(7):
        (folder / f"p{i}.jpg").write_bytes(_photo(i))
    (folder / "bad.jpg").write_bytes(b"<html>not a photo</html>")
    return folder


def _batches(folder, workers: int):
    items = list(iter_source(folder))
    plan = [
        [(ChunkTag(0, "k", last=start + 3 >= len(items)), it) for it in items[start : start + 3]]
        for start in range(0, len(items), 3)
    ]
    prepare = PrepareImages(56, 10_000_000, draft_size=64, thumbnail_size=32)
    return list(image_loader(plan, prepare, workers, pin_memory=False))


def test_workers_give_the_in_process_batches_and_the_encoders_input(photos):
    in_process, workers = _batches(photos, 0), _batches(photos, 2)
    assert [b.tag.last for b in workers] == [False, False, True]
    for a, b in zip(in_process, workers, strict=True):
        assert [i.id for i in a.infos] == [i.id for i in b.infos]
        assert torch.equal(a.pixels, b.pixels) and a.pixels.dtype == torch.uint8
        assert a.thumbnails == b.thumbnails
        assert [s.reason for s in a.skipped] == [s.reason for s in b.skipped]
    assert [s.reason for b in workers for s in b.skipped] == ["not_an_image"]
    first = workers[0]
    image = upright_rgb(Image.open(photos / first.infos[0].id))
    torch.testing.assert_close(
        normalize(first.pixels[0]), eval_transform(image, 56), atol=0, rtol=0
    )
    assert Image.open(io.BytesIO(first.thumbnails[0])).size == (32, 25)


def test_uint8_pixels_encode_like_normalised_floats(tiny_model):
    data = _photo(3, (300, 240))
    floats = tiny_model.preprocess([upright_rgb(Image.open(io.BytesIO(data)))])
    _, prepared = PrepareImages(224, 10_000_000, None, None)[
        (ChunkTag(0, "k", True), SourceItem("x", "x.jpg", data=data))
    ]
    uint8 = prepared.pixels[None]  # type: ignore[union-attr]
    assert uint8.dtype == torch.uint8
    torch.testing.assert_close(tiny_model.encode_images(uint8), tiny_model.encode_images(floats))


def _job(tmp_path, photos, **kwargs) -> IndexJob:
    settings = {"source": str(photos), "store": str(tmp_path / "store"), "checkpoint": "unused",
                "chunk_size": 3, "batch_size": 2, "progress": False}  # fmt: skip
    return IndexJob(**{**settings, **kwargs})


def test_chunks_with_nothing_new_are_committed_and_in_process_decoding_works(
    tmp_path, photos, tiny_model
):
    first = run_index_job(_job(tmp_path, photos, decode_workers=0), tiny_model)
    assert (first.indexed, first.skipped, first.chunks_written) == (7, 1, 3)
    # cut differently: every chunk is new, but all its images are stored -> empty commits
    again = run_index_job(_job(tmp_path, photos, chunk_size=4), tiny_model)
    assert (again.indexed, again.already_stored, again.chunks_written) == (0, 7, 2)
    third = run_index_job(_job(tmp_path, photos, chunk_size=4), tiny_model)
    assert (third.chunks_done_before, third.chunks_written) == (2, 0)


def test_duplicate_content_in_an_earlier_chunk_is_skipped(tmp_path, photos, tiny_model):
    (photos / "q-copy.jpg").write_bytes((photos / "p0.jpg").read_bytes())  # sorted last
    job = _job(tmp_path, photos, chunk_size=2, batch_size=1, skip_duplicate_content=True)
    report = run_index_job(job, tiny_model)
    assert (report.indexed, report.already_stored) == (7, 1)
    with CorpusStore.open(tmp_path / "store") as store:
        assert "q-copy.jpg" not in store.ids() and "p0.jpg" in store.ids()
