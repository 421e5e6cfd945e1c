"""The query table: a text's lexical vector with no language model (the ``table`` query mode).

Every tokenizer token has a row: a sparse, non-negative vector over the LexVLA vocabulary, at most
``top_k`` words a token. A text's vector is the sum of its tokens' rows, normalised and
thresholded exactly as a model query is (``model.lexical.l2norm_rows`` is ``l2norm`` on sparse
rows, then ``LexVLA.sparsify`` with the checkpoint's threshold and top-k), so it is a query like
any other: its score against an image is the sum of per-word contributions ``q_j * d_j``.

Tokenization (:func:`query_token_ids`): the text is lower-cased (the vocabulary is lower-case, and
words mode does the same) and tokenized without special tokens, and the tokenizer's BOS token is
put first, so it is part of every query: its row is a learned query prior, added to every text.

Encoding a batch is one sparse product, token counts (B x T) times the table (T x V), then the
row norms and the threshold on the stored entries only (no row is ever dense, and each is sorted
once, after the threshold). It needs no torch, so the service runs it on its event loop, like
words mode (``service.search.pipeline``); ``bench/query_table.py`` measures it.

The rows are learned by distillation from the checkpoint's text encoder (``training.query_table``
states the objective). They are stored inside the checkpoint folder, beside the weights::

    query_table.safetensors   indptr (T+1, int64), indices (nnz, int32), values (nnz, float32);
                              metadata: format, format_version, vocabulary_hash, tokens (T),
                              teacher (the checkpoint id it was distilled from), settings (the
                              stage's, JSON)

A table changes no image vector, so it does not enter the checkpoint id: indexes built with the
checkpoint stay valid when a table is added. Loading checks the vocabulary hash and that every
token of the tokenizer has a row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from common.atomic import temp_path

from .checkpoint import CheckpointError
from .lexical import l2norm_rows
from .sparsify import sparsify
from .vocabulary import Vocabulary

FILE = "query_table.safetensors"
FORMAT = "lexvla-query-table"
FORMAT_VERSION = "1"


class MissingQueryTable(CheckpointError):
    """A ``table``-mode query on a checkpoint without a query table."""


def query_token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """The token ids a text's vector sums: BOS (the query prior), then the lower-cased text's."""
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not a single string")
    lowered = [t.lower() for t in texts]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's Rust half
    if backend is not None:  # the same ids without transformers' per-call work (tested)
        found = [e.ids for e in backend.encode_batch_fast(lowered, add_special_tokens=False)]
    else:
        found = tokenizer(lowered, add_special_tokens=False)["input_ids"]
    prior = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    return [prior + list(ids) for ids in found]


def token_counts(ids: Sequence[Sequence[int]], tokens: int) -> sp.csr_matrix:
    """(B, tokens) float32 counts of each text's token ids: a repeated token is stored once per
    occurrence (a product sums them; summing them here would sort every row)."""
    lengths = np.fromiter((len(i) for i in ids), dtype=np.int32, count=len(ids))
    indptr = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=indptr[1:])
    flat = np.fromiter((t for i in ids for t in i), dtype=np.int32, count=int(indptr[-1]))
    if len(flat) and (flat.min() < 0 or flat.max() >= tokens):
        raise ValueError(f"token id {int(flat.max())} is outside the table's {tokens} rows")
    return sp.csr_matrix(
        (np.ones(len(flat), dtype=np.float32), flat, indptr), shape=(len(ids), tokens)
    )


class QueryTable:
    """A table bound to a tokenizer and to the checkpoint's sparsity settings."""

    def __init__(
        self,
        rows: sp.csr_matrix,
        tokenizer: Any,
        vocabulary: Vocabulary,
        threshold: float | None = None,
        top_k: int | None = None,
        meta: dict[str, str] | None = None,
    ):
        if rows.shape[1] != len(vocabulary):
            raise ValueError(
                f"the table has {rows.shape[1]} columns; the vocabulary {len(vocabulary)} words"
            )
        if rows.shape[0] < len(tokenizer):
            raise ValueError(
                f"the table has {rows.shape[0]} rows; the tokenizer {len(tokenizer)} tokens"
            )
        self.rows = sp.csr_matrix(rows, dtype=np.float32)
        self.tokenizer, self.vocabulary = tokenizer, vocabulary
        self.threshold, self.top_k = threshold, top_k
        self.meta = dict(meta or {})

    @classmethod
    def for_model(cls, rows: sp.csr_matrix, model: Any, meta: dict[str, str]) -> QueryTable:
        """Bound to ``model``'s tokenizer, vocabulary and sparsity settings."""
        s = model.config.sparsity
        return cls(rows, model.tokenizer, model.vocabulary, s.threshold, s.top_k, meta)

    # --- encoding -----------------------------------------------------------------------------
    def summed(self, texts: Sequence[str]) -> sp.csr_matrix:
        """(B, V): the sum of each text's token rows, before normalisation."""
        counts = token_counts(query_token_ids(self.tokenizer, texts), self.rows.shape[0])
        return sp.csr_matrix(counts @ self.rows)

    def encode(self, texts: Sequence[str]) -> sp.csr_matrix:
        """(B, V) float32 CSR query vectors: normalised, thresholded sums of token rows."""
        return sparsify(l2norm_rows(self.summed(texts)), self.threshold, self.top_k)

    def encode_row(self, text: str) -> sp.csr_matrix:
        return self.encode([text])

    # --- files --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/query_table.safetensors`` atomically (temporary name, then rename)."""
        final = Path(folder) / FILE
        tmp = temp_path(final)
        meta = {
            **self.meta,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vocabulary_hash": self.vocabulary.hash,
            "tokens": str(self.rows.shape[0]),
        }
        tensors = {
            "indptr": self.rows.indptr.astype(np.int64),
            "indices": self.rows.indices.astype(np.int32),
            "values": self.rows.data.astype(np.float32),
        }
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, final)
        return final

    @classmethod
    def load(cls, path: str | Path, model: Any) -> QueryTable:
        """Read a table file for ``model``; CheckpointError if it belongs to another vocabulary
        or tokenizer, or is not a table file."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), "np") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable query table: {exc}") from exc
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has format {meta.get('format')!r} v{meta.get('format_version')}; this "
                f"version reads {FORMAT!r} v{FORMAT_VERSION}"
            )
        if meta.get("vocabulary_hash") != model.vocabulary.hash:
            raise CheckpointError(
                f"{path} was made for another vocabulary (hash "
                f"{str(meta.get('vocabulary_hash'))[:12]}, the model's {model.vocabulary.hash[:12]})"
                ": train a table for this checkpoint"
            )
        tokens = int(meta.get("tokens", -1))
        rows = sp.csr_matrix(
            (tensors["values"], tensors["indices"], tensors["indptr"]),
            shape=(tokens, len(model.vocabulary)),
        )
        try:
            return cls.for_model(rows, model, meta)
        except ValueError as exc:
            raise CheckpointError(f"{path} does not fit this checkpoint: {exc}") from exc


def require_table(model: Any) -> QueryTable:
    """``model.query_table``, or MissingQueryTable saying how to get one."""
    table = getattr(model, "query_table", None)
    if table is None:
        raise MissingQueryTable(
            f"checkpoint {model.checkpoint_id} has no query table, so mode 'table' is not "
            "available: use mode 'model' or 'words', or train one (`lexvla train` with "
            "query_table.steps > 0)"
        )
    return table
