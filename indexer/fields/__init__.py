"""Image metadata at search time: conditions (``where``), sort keys and facet counts.

- :mod:`indexer.fields.where`: the conditions of a search checked against the field registry,
  with their reference semantics on plain records;
- :mod:`indexer.fields.columns`: an index version's metadata as memory-mapped columns, which
  turn conditions into masks over images, and give sort keys and facet counts; a base segment
  plus a delta (:mod:`indexer.fields.segment`, merged by :mod:`indexer.fields.fold`), so that a
  single-image write costs what it changed.

Engines that filter by metadata themselves (Qdrant: payload indexes) translate
:class:`~indexer.fields.where.Where` into their own filters; the others mask their rows with
:class:`~indexer.fields.columns.FieldColumns`.
"""

from indexer.fields.columns import FieldColumns
from indexer.fields.where import Where, WhereError, parse_where

__all__ = ["FieldColumns", "Where", "WhereError", "parse_where"]
