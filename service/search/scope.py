"""What one request may see and ask for: a key's collections, and a search's arrangement.

A key limited to collections (``service.core.keys``) sees only their images, on every endpoint:
its searches carry the condition ``collection in [...]`` besides the request's own ``where``
(so hits, facets and counts never include another collection), and an image of another
collection answers exactly as a missing one does (:func:`check_in_index`, :func:`check_in_store`:
the same 404, the same body), so a key cannot even learn that the id exists.
"""

from __future__ import annotations

from typing import Any

from indexer import scoring
from indexer.fields import WhereError
from indexer.metadata import COLLECTION, DEFAULT_COLLECTION
from indexer.scoring import Arrangement
from indexer.store import CorpusStore
from service.core.errors import InvalidInput, NotFound
from service.core.keys import Access
from service.search.indexes import IndexHandle


def arrangement(
    handle: IndexHandle,
    access: Access,
    where: dict[str, Any] | None,
    sort: str = "relevance",
    facets: list[str] | None = None,
) -> Arrangement:
    """The request's conditions, order and facets checked against the served index's fields
    (422 naming the field), with the key's collections added."""
    try:
        return scoring.arrangement(
            handle.index.fields, where, sort, facets or [], access.collections
        )
    except WhereError as exc:
        loc = ["body", exc.field] if exc.field in ("sort", "facets", "where") else None
        raise InvalidInput(str(exc), loc=loc or ["body", "where", exc.field]) from None


def check_in_index(handle: IndexHandle, access: Access, image_id: str, missing: NotFound) -> None:
    """Raise ``missing`` (what the endpoint answers for an unknown id) when ``access`` may not
    see the image in the served index."""
    if access.collections is None:
        return
    fields = handle.index.fields
    record = fields.records([image_id]).get(image_id) if fields is not None else None
    if record is None or record.get(COLLECTION, DEFAULT_COLLECTION) not in access.collections:
        raise missing


def check_in_store(store: CorpusStore, access: Access, image_id: str, missing: NotFound) -> None:
    """:func:`check_in_index` for the images and thumbnails the corpus store serves."""
    if access.collections is None:
        return
    record = store.metadata_records([image_id]).get(image_id)
    if record is None or record.get(COLLECTION, DEFAULT_COLLECTION) not in access.collections:
        raise missing
