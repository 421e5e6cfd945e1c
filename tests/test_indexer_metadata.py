"""indexer.metadata and indexer.metadata_job: per-image metadata recorded at indexing.

EXIF written by Pillow and read back, the typed field registry (inference, declarations,
refusals), the runner recording file/EXIF/source/collection fields for folders, manifests and
webdataset shards, bad values as skips, metadata-only updates that never call the encoder, and a
store of the previous format opening (migrated) with its vectors intact.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from indexer import cli
from indexer.job import IndexJob
from indexer.metadata import FieldRegistry, MetadataError, check_collection, infer_type
from indexer.metadata_job import exif_fields
from indexer.runner import run_index_job
from indexer.store import CorpusStore


def _jpeg(color=(200, 10, 10), exif: Image.Exif | None = None, size=(40, 30)) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.save(out, format="JPEG", **({"exif": exif} if exif is not None else {}))
    return out.getvalue()


def _camera_exif(offset: str | None = "+02:00", gps: bool = True) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "EOS 5D"
    detail = exif.get_ifd(ExifTags.IFD.Exif)
    detail[ExifTags.Base.DateTimeOriginal] = "2021:06:01 12:30:45"
    if offset is not None:
        detail[ExifTags.Base.OffsetTimeOriginal] = offset
    if gps:
        point = exif.get_ifd(ExifTags.IFD.GPSInfo)
        point[ExifTags.GPS.GPSLatitudeRef] = "S"
        point[ExifTags.GPS.GPSLatitude] = (33.0, 51.0, 54.36)
        point[ExifTags.GPS.GPSLongitudeRef] = "W"
        point[ExifTags.GPS.GPSLongitude] = (151.0, 12.0, 36.0)
    return exif


# --- EXIF -------------------------------------------------------------------------------------
def test_exif_capture_time_with_offset_camera_and_gps():
    fields = exif_fields(_jpeg(exif=_camera_exif()))
    assert fields["taken_at"] == "2021-06-01T12:30:45+02:00"
    assert (fields["camera_make"], fields["camera_model"]) == ("Canon", "EOS 5D")
    # 33 deg 51' 54.36" S, 151 deg 12' 36" W: the reference letters make them negative
    assert fields["location"]["lat"] == pytest.approx(-(33 + 51 / 60 + 54.36 / 3600))
    assert fields["location"]["lon"] == pytest.approx(-(151 + 12 / 60 + 36 / 3600))


def test_exif_capture_time_without_offset_and_missing_exif():
    fields = exif_fields(_jpeg(exif=_camera_exif(offset=None, gps=False)))
    assert fields == {"taken_at": "2021-06-01T12:30:45", "camera_make": "Canon",
                      "camera_model": "EOS 5D"}  # fmt: skip
    assert exif_fields(_jpeg()) == {}
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert exif_fields(png.getvalue()) == {}
    assert exif_fields(b"not an image at all") == {}


# --- types and the registry -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["2021-06-01", "2021-06-02T10:00:00+01:00"], "datetime"),
        (["2021-06-01", "yesterday"], "keyword"),  # one value that does not parse: keyword
        ([["beach", "sunset"], ["family"]], "keywords"),
        (["beach|sunset"], "keyword"),  # separated tags stay one keyword unless declared
        (["beach,sunset"], "keyword"),
        (["1", "42"], "integer"),
        ([3, 7], "integer"),
        (["1", "2.5"], "float"),
        ([1, 2.5], "float"),
        (["007"], "keyword"),  # a code with leading zeros is no number
        (["1e5"], "keyword"),
        ([{"lat": 48.85, "lon": 2.35}], "geo"),
        ([{"lat": 148.0, "lon": 2.35}], "keyword"),  # out of range: no point
        ([True, False], "keyword"),
        ([1, "x"], "keyword"),
    ],
)
def test_type_inference_is_conservative(values, kind):
    assert infer_type(values) == kind


def test_declared_types_parse_values_and_refuse_what_does_not():
    registry = FieldRegistry()
    registry.declare(["tags:keywords", "year:integer", "shot:datetime", "where:geo"])
    typed = registry.coerce(
        {"tags": "beach| sunset |", "year": "2021", "shot": "2021-06-01T10:00:00Z",
         "where": "48.85, 2.35"}
    )  # fmt: skip
    assert typed == {"tags": ["beach", "sunset"], "year": 2021,
                     "shot": "2021-06-01T10:00:00+00:00", "where": {"lat": 48.85, "lon": 2.35}}  # fmt: skip
    assert registry.coerce({"tags": "a, b"})["tags"] == ["a", "b"]
    with pytest.raises(
        MetadataError, match=r"field 'year': \"two thousand\" is not of type integer"
    ):
        registry.coerce({"year": "two thousand"})
    with pytest.raises(MetadataError, match="field 'collection'"):
        registry.coerce({"collection": "Holiday Photos"})


def test_conflicting_declarations_are_refused():
    registry = FieldRegistry()
    registry.infer([{"year": 2020}, {"year": 2021}])
    assert registry.fields["year"].source == "inferred"
    registry.declare(["year:integer"])  # the same type again: nothing changes
    with pytest.raises(ValueError, match="'year' is already of type integer") as err:
        registry.declare(["year:keyword"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="'taken_at' is already of type datetime"):
        registry.declare(["taken_at:keyword"])
    with pytest.raises(ValueError, match="NAME:TYPE"):
        registry.declare(["year:number"])


def test_collection_names_are_slugs():
    assert check_collection("family-2021_b") == "family-2021_b"
    for bad in ("", "Family", "my photos", "-x", "a" * 65):
        with pytest.raises(ValueError, match="not a slug"):
            check_collection(bad)
    with pytest.raises(ValueError, match="collection"):
        IndexJob(source="x", store="y", checkpoint="z", collection="Not A Slug")


# --- at indexing ------------------------------------------------------------------------------
def _job(tmp_path: Path, source: Path, **kwargs) -> IndexJob:
    settings = {"source": str(source), "store": str(tmp_path / "store"), "checkpoint": "unused",
                "chunk_size": 4, "batch_size": 3, "progress": False, "decode_workers": 0}  # fmt: skip
    return IndexJob(**{**settings, **kwargs})


def _records(tmp_path: Path) -> dict[str, dict]:
    with CorpusStore.open(tmp_path / "store") as store:
        return store.metadata_records(store.ids())


def test_folder_album_file_fields_and_exif(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    (photos / "trips" / "2021").mkdir(parents=True)
    (photos / "root.jpg").write_bytes(_jpeg())
    (photos / "trips" / "2021" / "beach.jpg").write_bytes(_jpeg(exif=_camera_exif()))
    os.utime(photos / "root.jpg", (1_600_000_000, 1_600_000_000))
    report = run_index_job(_job(tmp_path, photos, collection="family"), tiny_model)
    assert report.indexed == 2
    records = _records(tmp_path)
    root = records["root.jpg"]
    assert root == {"path": str(photos / "root.jpg"), "album": "", "collection": "family",
                    "bytes": (photos / "root.jpg").stat().st_size,
                    "modified_at": "2020-09-13T12:26:40+00:00"}  # fmt: skip
    beach = records["trips/2021/beach.jpg"]
    assert beach["album"] == "trips/2021" and beach["taken_at"] == "2021-06-01T12:30:45+02:00"
    assert beach["camera_model"] == "EOS 5D" and beach["location"]["lat"] < 0
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["fields"]["taken_at"] == {"type": "datetime", "source": "exif"}


def test_csv_extra_columns_declared_types_and_collection_column(tmp_path, tiny_model):
    (tmp_path / "a.jpg").write_bytes(_jpeg((10, 200, 10)))
    (tmp_path / "b.jpg").write_bytes(_jpeg((10, 10, 200), exif=_camera_exif()))
    (tmp_path / "photos.csv").write_text(
        "image,caption,tags,year,rating,shot,collection,taken_at\n"
        "a.jpg,a green square,beach|sunset,2020,4.5,2020-07-01T09:00:00,,\n"
        "b.jpg,a blue square,family,2021,3,2021-01-02,work,2019-05-05T05:05:05\n"
    )
    job = _job(tmp_path, tmp_path / "photos.csv", fields=["tags:keywords"])
    run_index_job(job, tiny_model)
    records = _records(tmp_path)
    a, b = records["a.jpg"], records["b.jpg"]
    assert a["tags"] == ["beach", "sunset"] and b["tags"] == ["family"]
    assert (a["year"], a["rating"], b["rating"]) == (2020, 4.5, 3.0)
    assert a["shot"] == "2020-07-01T09:00:00" and b["shot"] == "2021-01-02T00:00:00"
    assert (a["collection"], b["collection"]) == ("default", "work")
    assert b["taken_at"] == "2019-05-05T05:05:05"  # the manifest's value wins over the EXIF's
    assert b["camera_make"] == "Canon" and "caption" not in a
    fields = json.loads((tmp_path / "store" / "manifest.json").read_text())["fields"]
    assert fields["tags"] == {"type": "keywords", "source": "declared"}
    assert fields["year"] == {"type": "integer", "source": "inferred"}
    assert fields["rating"]["type"] == "float" and fields["shot"]["type"] == "datetime"
    with CorpusStore.open(tmp_path / "store") as store:  # the catalog's registry agrees
        assert {f.name: f.type for f in store.catalog.fields()}["rating"] == "float"
        assert store.metadata("a.jpg").extra["caption"] == "a green square"


def test_jsonl_keys_and_webdataset_json_member(tmp_path, tiny_model):
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    line = {"image": "a.jpg", "caption": "red", "tags": ["beach", "sunset"], "people": ["ann"],
            "licence": "cc-by", "where": {"lat": 1.5, "lon": 2.5}, "views": 12}  # fmt: skip
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n")
    run_index_job(_job(tmp_path, tmp_path / "m.jsonl"), tiny_model)
    record = _records(tmp_path)["a.jpg"]
    assert {k: record[k] for k in ("tags", "people", "licence", "where", "views")} == {
        "tags": ["beach", "sunset"], "people": ["ann"], "licence": "cc-by",
        "where": {"lat": 1.5, "lon": 2.5}, "views": 12}  # fmt: skip

    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for key, meta in (
            ("s1", {"album": "paris", "tags": ["eiffel"]}),
            ("s2", {"album": "rome"}),
        ):
            for name, data in ((f"{key}.jpg", _jpeg()), (f"{key}.txt", b"a photo"),
                               (f"{key}.json", json.dumps(meta).encode())):  # fmt: skip
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    store = tmp_path / "wds"
    run_index_job(_job(tmp_path, shards / "00000.tar", store=str(store)), tiny_model)
    with CorpusStore.open(store) as opened:
        records = opened.metadata_records(["s1", "s2"])
        assert records["s1"]["album"] == "paris" and records["s1"]["tags"] == ["eiffel"]
        assert records["s2"]["album"] == "rome" and "tags" not in records["s2"]
        assert "modified_at" not in records["s1"]  # a tar member is no file on disk


def test_a_value_that_does_not_parse_is_a_skip_naming_the_field(tmp_path, tiny_model):
    for name in "abcde":
        (tmp_path / f"{name}.jpg").write_bytes(_jpeg())
    # the first chunk (4 rows) makes "year" an integer; the fifth row's value is not one
    rows = ["image,year", "a.jpg,2001", "b.jpg,2002", "c.jpg,2003", "d.jpg,", "e.jpg,unknown"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    report = run_index_job(_job(tmp_path, tmp_path / "m.csv"), tiny_model)
    assert (report.indexed, report.skipped, report.reasons) == (4, 1, {"bad_metadata": 1})
    with CorpusStore.open(tmp_path / "store") as store:
        [skip] = store.skipped()
        assert skip.id == "e.jpg" and "field 'year'" in skip.detail and '"unknown"' in skip.detail
        assert not store.has_id("e.jpg") and "year" not in store.metadata("d.jpg").metadata


def test_conflicting_field_declaration_is_refused_in_one_line(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "m.csv").write_text("image,year\na.jpg,2001\n")
    base = ["--source", str(tmp_path / "m.csv"), "--store", str(tmp_path / "store"),
            "--no-progress", "--decode-workers", "0"]  # fmt: skip
    assert cli.main(["build", *base, "--checkpoint", str(tiny_checkpoint),
                     "--field", "year:integer", "--field", "note:keyword"]) == 0  # fmt: skip
    capsys.readouterr()
    # refused before any model is loaded: the checkpoint need not even exist
    code = cli.main(["add", *base, "--checkpoint", str(tmp_path / "nope"), "--field", "year:float"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'year' is already of type integer" in err
    fields = json.loads((tmp_path / "store" / "manifest.json").read_text())["fields"]
    assert fields["note"] == {"type": "keyword", "source": "declared"}
    assert cli.main(["add", *base, "--checkpoint", str(tiny_checkpoint), "--field", "year"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NAME:TYPE" in err


def test_metadata_only_update_does_not_encode(tmp_path, tiny_model, monkeypatch):
    for name in "abc":
        (tmp_path / f"{name}.jpg").write_bytes(_jpeg())
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,tags\na.jpg,old\nb.jpg,old\n")
    run_index_job(_job(tmp_path, manifest), tiny_model)
    with CorpusStore.open(tmp_path / "store") as store:
        before = store.vectors_of(["a.jpg", "b.jpg"]).toarray()
        modified = store.metadata("a.jpg").metadata["modified_at"]

    encoded: list[int] = []
    original = tiny_model.encode_images

    def counting(pixels, *args, **kwargs):
        encoded.append(len(pixels))
        return original(pixels, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "encode_images", counting)
    # the same manifest, edited: a.jpg's tags change, b.jpg moves collection, c.jpg is new
    manifest.write_text("image,tags,collection\na.jpg,new,\nb.jpg,old,archive\nc.jpg,x,\n")
    report = run_index_job(_job(tmp_path, manifest, require_store=True), tiny_model)
    assert encoded == [1] and report.indexed == 1 and report.metadata_updated == 2
    records = _records(tmp_path)
    assert records["a.jpg"]["tags"] == "new" and records["a.jpg"]["modified_at"] == modified
    assert records["b.jpg"]["collection"] == "archive" and records["c.jpg"]["tags"] == "x"
    with CorpusStore.open(tmp_path / "store") as store:
        np.testing.assert_array_equal(store.vectors_of(["a.jpg", "b.jpg"]).toarray(), before)
        assert store.metadata("a.jpg").extra == {"tags": "new", "collection": ""}

    encoded.clear()  # run again unchanged: every chunk is done, nothing encoded or updated
    report = run_index_job(_job(tmp_path, manifest, require_store=True), tiny_model)
    assert encoded == [] and report.metadata_updated == 0 and report.chunks_done_before == 1


def _downgrade_to_format_1(root: Path) -> None:
    """Rewrite a store as the previous format wrote it: no metadata column, no fields table,
    and done keys that named a chunk's ids alone (so none matches a chunk key of today)."""
    db = sqlite3.connect(root / "metadata.sqlite")
    db.executescript("ALTER TABLE images DROP COLUMN metadata; DROP TABLE fields; DELETE FROM done")
    db.close()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("fields")
    (root / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))


def test_a_store_of_the_previous_format_opens_migrated(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in range(3):
        (photos / f"p{n}.jpg").write_bytes(_jpeg((n * 60, 10, 10)))
    run_index_job(_job(tmp_path, photos), tiny_model)
    with CorpusStore.open(tmp_path / "store") as store:
        ids, vectors = store.vectors()
    _downgrade_to_format_1(tmp_path / "store")

    with CorpusStore.open(tmp_path / "store") as store:
        assert store.manifest["format_version"] == 2
        again_ids, again = store.vectors()
        assert again_ids == ids and (again != vectors).nnz == 0
        assert store.metadata("p1.jpg").metadata == {
            "path": str(photos / "p1.jpg"), "bytes": (photos / "p1.jpg").stat().st_size,
            "collection": "default"}  # fmt: skip
        assert store.fields.type_of("taken_at") == "datetime"
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["format_version"] == 2
    # indexing into it again fills the source fields without re-encoding anything
    report = run_index_job(_job(tmp_path, photos), tiny_model)
    assert report.indexed == 0 and report.metadata_updated == 3
    assert _records(tmp_path)["p1.jpg"]["album"] == ""


def test_a_store_migrated_meanwhile_by_another_process_is_left_as_it_is(tmp_path, monkeypatch):
    """Two processes open one older store: the second finds it migrated under the write lock."""
    from indexer.catalog import Catalog

    Catalog(tmp_path / "metadata.sqlite").close()  # an up-to-date catalog
    looks = []
    real = Catalog._up_to_date

    def stale_once(self):  # the first look (before the lock) saw the older layout
        current, columns = real(self)
        looks.append(current)
        return (current, columns) if len(looks) > 1 else (False, columns - {"metadata"})

    monkeypatch.setattr(Catalog, "_up_to_date", stale_once)
    catalog = Catalog(tmp_path / "metadata.sqlite")  # no "duplicate column" error
    assert len(looks) == 2  # looked again under the write lock
    columns = catalog.column("SELECT name FROM pragma_table_info('images')")
    assert columns.count("metadata") == 1
    catalog.close()
