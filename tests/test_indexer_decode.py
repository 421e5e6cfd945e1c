"""indexer.decode over model.data sources: every odd image becomes RGB or a Skipped with a reason."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.decode import Decoded, decode_item, iter_decoded, thumbnail_jpeg
from model.data import Skipped, SourceItem, decode_bytes, detect_kind, iter_source, resolve_shards
from model.preprocessing import to_rgb


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _gradient(w: int = 64, h: int = 48) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return Image.fromarray(arr)


def _decode(data: bytes, **kwargs) -> Decoded | Skipped:
    return decode_item(SourceItem(id="x", path="x", data=data), **kwargs)


def _ok(data: bytes, **kwargs) -> Decoded:
    result = _decode(data, **kwargs)
    assert isinstance(result, Decoded), result
    assert result.image.mode == "RGB"
    return result


def _skipped(data: bytes, **kwargs) -> str:
    result = _decode(data, **kwargs)
    assert isinstance(result, Skipped), result
    return result.message


def test_cmyk_jpeg_becomes_rgb():
    out = _ok(_save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"))  # red in CMYK
    r, g, b = out.image.getpixel((20, 15))
    assert r > 200 and g < 60 and b < 60
    assert (out.info.width, out.info.height, out.info.format) == (40, 30, "JPEG")


def test_16bit_png_is_scaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey at 16 bits
    data = _save(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    value = _ok(data).image.getpixel((0, 0))
    assert value == (127, 127, 127) or value == (128, 128, 128)


def test_palette_with_transparency_is_flattened_on_white():
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((5, 5), 1)
    data = _save(image, "PNG", transparency=0)
    out = _ok(data).image
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent black -> white
    assert out.getpixel((5, 5)) == (255, 0, 0)


def test_rgba_and_la_are_flattened_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    out = _ok(_save(rgba, "PNG")).image
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (0, 0, 255)
    la = Image.new("LA", (4, 4), (0, 128))  # half-transparent black
    assert _ok(_save(la, "PNG")).image.getpixel((0, 0))[0] in (127, 128)


def test_animated_gif_keeps_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = _ok(data)
    assert out.info.format == "GIF"
    r, g, b = out.image.getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _save(_gradient(64, 48), "JPEG", exif=exif.tobytes())
    out = _ok(data)
    assert out.image.size == (48, 64)
    assert (out.info.width, out.info.height) == (48, 64)


def test_draft_mode_keeps_at_least_the_target_size():
    data = _save(_gradient(1600, 1200), "JPEG")
    out = _ok(data, draft_size=224)
    assert min(out.image.size) >= 224 and out.image.size[0] < 1600
    assert (out.info.width, out.info.height) == (1600, 1200)  # the full size is recorded


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"<html><body>404 not found</body></html>", "not an image"),
        (_save(_gradient(200, 200), "JPEG")[:300], "truncated"),
        (_save(_gradient(200, 200), "JPEG")[:-400], "truncated"),
    ],
    ids=["empty", "html-named-jpg", "truncated-header", "truncated-jpeg"],
)
def test_bad_files_are_skipped_with_a_reason(data, reason):
    assert reason in _skipped(data)


def test_pixel_limit_is_explicit_and_skips():
    data = _save(Image.new("L", (300, 200)), "PNG")
    assert "too many pixels" in _skipped(data, max_pixels=10_000)
    assert "too many pixels" in _skipped(data, max_pixels=25_000)  # 60k px > 2x: Pillow's error
    _ok(data, max_pixels=60_000)
    assert Image.MAX_IMAGE_PIXELS != 10_000  # the process-wide setting is restored


def test_to_rgb_handles_float_and_32bit_modes():
    f = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), mode="F")
    assert to_rgb(f).getpixel((0, 0)) in ((127, 127, 127), (128, 128, 128))
    i = Image.fromarray(np.full((2, 2), 200, dtype=np.int32), mode="I")
    assert to_rgb(i).getpixel((0, 0)) == (200, 200, 200)


def test_decode_bytes_raises_decode_error():
    with pytest.raises(ValueError, match="empty"):
        decode_bytes(b"")


def test_thumbnail_is_a_small_jpeg():
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(_gradient(1000, 500))))
    assert thumb.format == "JPEG" and thumb.size == (256, 128)


# --- sources --------------------------------------------------------------------------------


def _make_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(_save(_gradient(), "JPEG"))
    (root / "sub" / "B.PNG").write_bytes(_save(_gradient(), "PNG"))
    (root / "sub" / "c.webp").write_bytes(_save(_gradient(), "WEBP"))
    (root / "bad.jpg").write_bytes(b"this is text, not a jpeg")
    (root / "empty.tif").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not an image extension")


def test_folder_source_is_recursive_sorted_and_case_insensitive(tmp_path):
    _make_folder(tmp_path)
    results = list(iter_decoded(iter_source(tmp_path)))
    assert [r.info.id if isinstance(r, Decoded) else r.id for r in results] == [
        "a.jpg",
        "bad.jpg",
        "empty.tif",
        "sub/B.PNG",
        "sub/c.webp",
    ]
    skipped = {r.id: r.reason for r in results if isinstance(r, Skipped)}
    assert skipped == {"bad.jpg": "not_an_image", "empty.tif": "empty_file"}
    info = next(r.info for r in results if isinstance(r, Decoded) and r.info.id == "sub/B.PNG")
    assert info.format == "PNG" and (info.width, info.height) == (64, 48)
    data = (tmp_path / "sub" / "B.PNG").read_bytes()
    assert info.bytes == len(data) and len(info.sha256) == 64


def test_csv_manifest_ids_paths_and_metadata(tmp_path):
    _make_folder(tmp_path / "imgs")
    (tmp_path / "m.csv").write_text(
        "path,id,caption\nimgs/a.jpg,first,a red thing\nimgs/sub/B.PNG,,no id\n"
        "imgs/missing.jpg,gone,\nimgs/a.jpg,first,second caption\nimgs/sub/c.webp,first,other\n"
    )
    results = list(iter_decoded(iter_source(tmp_path / "m.csv")))
    assert len(results) == 4  # the repeated (id, image) row is a second caption, not an item
    assert isinstance(results[0], Decoded) and results[0].info.id == "first"
    assert results[0].info.extra == {
        "caption": "a red thing",
        "captions": ["a red thing", "second caption"],
    }
    assert isinstance(results[1], Decoded) and results[1].info.id == "imgs/sub/B.PNG"
    assert isinstance(results[2], Skipped) and results[2].reason == "missing_file"
    assert isinstance(results[3], Skipped) and results[3].reason == "duplicate_id"
    assert results[3].id == "first" and "c.webp" in results[3].detail


def test_jsonl_manifest_and_missing_path_column(tmp_path):
    _make_folder(tmp_path)
    lines = [{"path": "a.jpg", "id": 7, "source": "web"}, {"id": "nopath"}, "not an object"]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    results = list(iter_decoded(iter_source(tmp_path / "m.jsonl")))
    assert isinstance(results[0], Decoded) and results[0].info.id == "7"
    assert results[0].info.extra == {"source": "web"}
    assert [type(r) for r in results[1:]] == [Skipped, Skipped, Skipped]
    (tmp_path / "bad.csv").write_text("url,id\nhttp://a.jpg,1\n")
    with pytest.raises(ValueError, match="image column"):
        list(iter_source(tmp_path / "bad.csv"))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"{shard:05d}.tar", "w") as tar:
            for i in range(3):
                key = f"{shard:05d}{i:04d}"
                _add(tar, f"{key}.jpg", _save(_gradient(), "JPEG"))
                _add(tar, f"{key}.txt", f"caption {key}".encode())
                _add(tar, f"{key}.json", json.dumps({"url": f"http://x/{key}"}).encode())
            _add(tar, f"nothing{shard}.txt", b"a sample without an image")
        if shard == 1:
            with tarfile.open(tmp_path / f"{shard:05d}.tar", "a") as tar:
                _add(tar, "000000000.png", _save(_gradient(), "PNG"))
    assert detect_kind(tmp_path) == "webdataset"
    assert str(resolve_shards(str(tmp_path / "{00000..00001}.tar"))[1]).endswith("00001.tar")
    results = list(iter_decoded(iter_source(str(tmp_path / "{00000..00001}.tar"))))
    decoded = [r for r in results if isinstance(r, Decoded)]
    assert [d.info.id for d in decoded][:3] == ["000000000", "000000001", "000000002"]
    assert decoded[0].info.extra == {"caption": "caption 000000000", "url": "http://x/000000000"}
    assert decoded[0].info.path.endswith("00000.tar#000000000.jpg")
    skipped = [r for r in results if isinstance(r, Skipped)]
    assert len(decoded) == 6 and len(skipped) == 3
    assert skipped[0].reason == "missing_image" and "found .txt" in skipped[0].detail
    assert skipped[2].id == "000000000" and skipped[2].reason == "duplicate_id"


def test_corrupt_shard_yields_a_skipped_record(tmp_path):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "k1.jpg", _save(_gradient(), "JPEG"))
        _add(tar, "k2.jpg", _save(_gradient(400, 400), "JPEG"))
    path.write_bytes(path.read_bytes()[:1500])
    results = list(iter_decoded(iter_source(path)))
    assert isinstance(results[-1], Skipped) and "unreadable" in results[-1].reason
