"""``POST /images``, ``PATCH /images/{id}``, ``DELETE /images/{id}``: single-image writes.

Each write is committed to the corpus store and published as a new index version before it is
answered (``indexer.live``; adds arriving together share one, ``indexer.group_commit``), so a 2xx
is on disk; this process serves the new version at once,
the others within ``LEXVLA_INDEX_REFRESH_S``. Keys need the ``write`` right for the image's
collection; an image of a collection the key cannot see answers 404 exactly as a missing one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import scipy.sparse as sp
from fastapi import APIRouter, File, Form, Path, Response, UploadFile

from indexer.live import DiskFull, LiveWriter, Prepared, Upload
from indexer.metadata import COLLECTION, DEFAULT_COLLECTION, MetadataError
from model.data import Skipped
from service.api.deps import StateDep, WriteDep
from service.core.errors import (
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    PayloadTooLarge,
    error_responses,
)
from service.core.keys import Access
from service.schemas import MetadataPatch, WriteResponse, Written
from service.search.images import missing_in_store
from service.state import ServiceState

router = APIRouter(
    tags=["writes"], responses=error_responses(400, 401, 403, 404, 409, 422, 429, 507)
)
ImageIdPath = Annotated[str, Path(min_length=1, max_length=1024)]
MAX_FILES = 64


@router.post("/images", status_code=201, response_model=WriteResponse,
             responses=error_responses(413))  # fmt: skip
async def add_images(
    state: StateDep,
    access: WriteDep,
    file: Annotated[list[UploadFile], File(description="One or more images")],
    id: Annotated[list[str], Form(description="An id per file (optional)")] = [],  # noqa: B006
    collection: Annotated[list[str], Form(description="One for all, or one per file")] = [],  # noqa: B006
    metadata: Annotated[list[str], Form(description="JSON object: one for all, or per file")] = [],  # noqa: B006
) -> WriteResponse:
    """Index uploaded images; an id already present is replaced (a retried upload is no
    duplicate). Skipped uploads are listed with their reason, as in indexing."""
    writer = state.writer()
    uploads = await _uploads(state, file, id, collection, metadata)
    for upload in uploads:
        _check_collection(access, upload.collection or DEFAULT_COLLECTION)
        if upload.id is not None:
            _check_existing(writer, access, upload.id)
    prepared = [await asyncio.to_thread(writer.prepare, u) for u in uploads]
    ready = [p for p in prepared if isinstance(p, Prepared)]
    version = None
    if ready:
        rows = await _encode(state, ready)
        try:
            version = await asyncio.to_thread(state.adds().add, ready, rows)
        except DiskFull as exc:
            raise InsufficientStorage(str(exc)) from None
        await state.follow(force=True)
    return WriteResponse(images=[_written(p) for p in prepared], index_version=version)


@router.patch("/images/{image_id:path}", response_model=dict[str, Any])
async def update_image(
    image_id: ImageIdPath, body: MetadataPatch, state: StateDep, access: WriteDep
) -> dict[str, Any]:
    """Change an image's metadata without re-encoding it; answers its new record."""
    writer = state.writer()
    _check_existing(writer, access, image_id, missing=True)
    target = body.metadata.get(COLLECTION)
    if target is not None:
        _check_collection(access, str(target))
    try:
        record = await asyncio.to_thread(writer.update, image_id, body.metadata)
    except KeyError:
        raise missing_in_store(image_id) from None
    except (MetadataError, ValueError) as exc:
        raise InvalidInput(str(exc), loc=["body", "metadata"]) from None
    except DiskFull as exc:
        raise InsufficientStorage(str(exc)) from None
    await state.follow(force=True)
    return record


@router.delete("/images/{image_id:path}", status_code=204, response_class=Response)
async def delete_image(image_id: ImageIdPath, state: StateDep, access: WriteDep) -> Response:
    """Remove an image, its thumbnail and its vector; never returned again."""
    writer = state.writer()
    _check_existing(writer, access, image_id, missing=True)
    try:
        removed = await asyncio.to_thread(writer.delete, image_id)
    except DiskFull as exc:
        raise InsufficientStorage(str(exc)) from None
    if not removed:
        raise missing_in_store(image_id)
    await state.follow(force=True)
    return Response(status_code=204)


async def _uploads(
    state: ServiceState,
    files: list[UploadFile],
    ids: list[str],
    collections: list[str],
    metadata: list[str],
) -> list[Upload]:
    n, limit = len(files), state.settings.max_upload_bytes
    if n > MAX_FILES:
        raise InvalidInput(f"{n} files in one request; the limit is {MAX_FILES}", loc=["body"])
    for name, given in (("id", ids), ("collection", collections), ("metadata", metadata)):
        if len(given) not in (0, n) and not (len(given) == 1 and name != "id"):
            raise InvalidInput(
                f"{len(given)} '{name}' fields for {n} files: give one per file"
                + ("" if name == "id" else " or one for all"),
                loc=["body", name],
            )
    uploads = []
    for i, f in enumerate(files):
        data = await f.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(
                f"file {f.filename!r} is larger than {limit:,} bytes (LEXVLA_MAX_UPLOAD_BYTES)",
                loc=["body", "file"],
            )
        text = metadata[i if len(metadata) == n else 0] if metadata else ""
        try:
            fields = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"metadata is not JSON: {exc.msg}", loc=["body", "metadata"]
            ) from None
        if not isinstance(fields, dict):
            raise InvalidInput("metadata must be a JSON object", loc=["body", "metadata"])
        uploads.append(Upload(
            data, f.filename or "upload", ids[i] if ids else None,
            collections[i if len(collections) == n else 0] if collections else None, fields,
        ))  # fmt: skip
    return uploads


async def _encode(state: ServiceState, ready: list[Prepared]) -> sp.csr_matrix:
    model, pipeline = state.model, state.pipeline
    assert model is not None and pipeline is not None
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        pipeline.model_executor, lambda: model.sparsify(model.encode_pil([p.image for p in ready]))
    )


def _check_collection(access: Access, collection: str) -> None:
    if not access.sees(collection):
        raise Forbidden(f"this API key may not write to collection {collection!r}")


def _check_existing(
    writer: LiveWriter, access: Access, image_id: str, missing: bool = False
) -> None:
    """An existing image of a collection the key cannot see is a missing one (404); with
    ``missing``, so is an unknown id."""
    record = writer.store.metadata_records([image_id]).get(image_id)
    if record is None:
        if missing:
            raise missing_in_store(image_id)
        return
    if not access.sees(record.get(COLLECTION, DEFAULT_COLLECTION)):
        raise missing_in_store(image_id)


def _written(p: Prepared | Skipped) -> Written:
    if isinstance(p, Prepared):
        return Written(id=p.info.id, status="indexed", reason=None)
    return Written(id=p.id or None, status="skipped", reason=p.message)
