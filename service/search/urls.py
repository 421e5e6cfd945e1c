"""Where clients fetch an image, its thumbnail and a word's heat map (ids are URL-quoted)."""

from __future__ import annotations

from urllib.parse import quote


def image_url(image_id: str) -> str:
    return f"/images/{quote(image_id, safe='')}"


def thumbnail_url(image_id: str) -> str:
    return f"/thumbnails/{quote(image_id, safe='')}"


def heatmap_url(image_id: str, word: str) -> str:
    return f"/explain/{quote(image_id, safe='')}/heatmap.png?word={quote(word, safe='')}"
