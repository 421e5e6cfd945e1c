"""Searches on the served :class:`IndexHandle`, and the API's answers for what they meet.

The scoring itself (exact contributions, re-scoring of approximate engines) is
``indexer.scoring``, shared with ``lexvla search``; this module adapts it to index handles and
turns a missing image into the API's ``NotFound`` and an engine whose server is unavailable
(``IndexUnavailable``: down, slow, refusing the key) into a 503 with the engine's message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import scipy.sparse as sp

from indexer import scoring
from indexer.engines.base import IndexUnavailable
from indexer.fields import WhereError
from indexer.scoring import (
    MAX_CANDIDATES,
    Contribution,
    ScoredHit,
    SearchOutcome,
    dense_query,
    explain_row,
    row_vectors,
)
from indexer.store import CorpusStore
from model.vocabulary import Vocabulary
from service.core.errors import InvalidInput, NotFound, Unavailable
from service.search.indexes import IndexHandle

__all__ = [
    "MAX_CANDIDATES",
    "Contribution",
    "ScoredHit",
    "SearchOutcome",
    "dense_query",
    "engine_errors",
    "explain_row",
    "image_row",
    "missing_in_index",
    "search_handle",
]


def search_handle(
    handle: IndexHandle,
    store: CorpusStore | None,
    vocabulary: Vocabulary,
    query: sp.csr_matrix,
    **options: Any,
) -> SearchOutcome:
    """``indexer.scoring.search`` on the handle's index, its options passed on as they are (runs
    in a search thread); whether the engine's top k is exact comes from the handle."""
    with engine_errors():
        return scoring.search(handle.index, store, vocabulary, query, exact=handle.exact, **options)


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """An engine server that is down, slow or refusing the key -> 503 with its message; a
    metadata condition the index cannot apply -> 422 naming it."""
    try:
        yield
    except IndexUnavailable as exc:
        raise Unavailable(f"the index is unavailable: {exc}") from None
    except WhereError as exc:
        raise InvalidInput(str(exc), loc=["body", exc.field]) from None


def image_row(
    handle: IndexHandle,
    store: CorpusStore | None,
    image_id: str,
    loc: tuple[str, ...] = ("body", "image_id"),
) -> sp.csr_matrix:
    """The lexical row of one indexed image; NotFound if the index does not hold it."""
    try:
        with engine_errors():
            return row_vectors(handle.index, store, [image_id])
    except KeyError:
        raise missing_in_index(handle, image_id, loc) from None


def missing_in_index(
    handle: IndexHandle, image_id: str, loc: tuple[str, ...] = ("body", "image_id")
) -> NotFound:
    """The 404 for an image the served index does not hold (or the key may not see)."""
    return NotFound(f"no image {image_id!r} in the index (version {handle.version})", loc=loc)
