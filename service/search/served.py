"""Searches on the served :class:`IndexHandle`, and the API's answers for what they meet.

The scoring itself (exact contributions, re-scoring of approximate engines) is
``indexer.scoring``, shared with ``lexvla search``; this module adapts it to index handles and
turns a missing image into the API's ``NotFound`` and an engine whose server is unavailable
(``IndexUnavailable``: down, slow, refusing the key) into a 503 with the engine's message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import scipy.sparse as sp

from indexer import scoring
from indexer.engines.base import IndexUnavailable
from indexer.fields import WhereError
from indexer.filters import WordFilter
from indexer.scoring import (
    MAX_CANDIDATES,
    RELEVANCE,
    Arrangement,
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
    *,
    top_k: int,
    offset: int = 0,
    min_score: float = 0.0,
    matched_limit: int | None = None,
    rescore_factor: int = 4,
    filters: WordFilter | None = None,
    arrange: Arrangement = RELEVANCE,
) -> SearchOutcome:
    """``indexer.scoring.search`` on the handle's index (runs in a search thread)."""
    with engine_errors():
        return scoring.search(
            handle.index,
            store,
            vocabulary,
            query,
            exact=handle.exact,
            top_k=top_k,
            offset=offset,
            min_score=min_score,
            matched_limit=matched_limit,
            rescore_factor=rescore_factor,
            filters=filters,
            arrange=arrange,
        )


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
