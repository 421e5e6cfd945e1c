"""model.data.decode and model.data.skips: every odd image becomes RGB, every bad one a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import SKIP_REASONS, SkipCounter, Skipped, clean_caption, decode_image, load_image
from model.preprocessing import upright_rgb as to_rgb


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _jpeg(size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return _encode(Image.fromarray(pixels), "JPEG", quality=90)


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 1)) == (255, 0, 0)
    grey_alpha = Image.new("LA", (2, 2), (0, 0))
    assert to_rgb(grey_alpha).getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_and_cmyk_and_greyscale() -> None:
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 1
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    cmyk = to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((1, 1)) == (77, 77, 77)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_and_float_are_scaled_not_clipped() -> None:
    deep = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert deep.mode.startswith("I")
    row = np.asarray(to_rgb(deep))[0, :, 0]
    assert row.tolist() == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 1].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 5, 10))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(image, "PNG", exif=exif.tobytes())
    decoded = decode_image(data, "rotated.png")
    assert isinstance(decoded, Image.Image)
    assert decoded.size == (10, 20)
    top = decoded.getpixel((5, 1))
    assert isinstance(top, tuple) and top[0] > 200  # the left strip is now on top


def test_decode_failures_become_reasons(tmp_path: Path) -> None:
    good = _jpeg()
    assert isinstance(decode_image(good, "good.jpg"), Image.Image)
    truncated = decode_image(good[: len(good) // 2], "cut.jpg")
    assert isinstance(truncated, Skipped) and truncated.reason == "corrupt_image"
    assert truncated.source == "cut.jpg" and "truncated" in truncated.detail
    garbage = decode_image(b"<html>this is not an image</html>", "page.jpg")
    assert isinstance(garbage, Skipped) and garbage.reason == "not_an_image"
    missing = load_image(tmp_path / "nope.jpg")
    assert isinstance(missing, Skipped) and missing.reason == "missing_file"
    folder = load_image(tmp_path)  # a directory: the read fails
    assert isinstance(folder, Skipped) and folder.reason == "unreadable_file"
    (tmp_path / "ok.jpg").write_bytes(good)
    loaded = load_image(tmp_path / "ok.jpg")
    assert isinstance(loaded, Image.Image) and loaded.size == (40, 30)


def test_captions_are_cleaned_or_skipped() -> None:
    assert clean_caption("  a  dog\n runs ", "x") == "a dog runs"
    assert clean_caption("\ufeffa cat".encode(), "x") == "a cat"
    for empty in ("", "   \n", None, b""):
        result = clean_caption(empty, "x")
        assert isinstance(result, Skipped) and result.reason == "empty_caption"
    bad = clean_caption(b"\xff\xfe\xfa", "x")
    assert isinstance(bad, Skipped) and bad.reason == "bad_caption"


def test_skip_counter_counts_merges_and_round_trips() -> None:
    counter = SkipCounter()
    counter.update({"corrupt_image": 2})
    counter.update({"empty_caption": 1, "corrupt_image": 1})
    counter.add("missing_file")
    assert counter.total == 5
    assert counter.as_dict() == {"missing_file": 1, "corrupt_image": 3, "empty_caption": 1}
    assert list(counter.as_dict()) == [r for r in SKIP_REASONS if r in counter.as_dict()]
    assert str(counter).startswith("5 skipped (")
    other = SkipCounter.from_state_dict(counter.state_dict())
    other.update(counter)
    assert other.as_dict()["corrupt_image"] == 6
    with pytest.raises(ValueError):
        counter.add("cosmic_rays")
    with pytest.raises(ValueError):
        Skipped("cosmic_rays", "x")
