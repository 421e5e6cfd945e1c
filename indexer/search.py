"""``lexvla search``: search an index and explain the hits from the command line, no server.

    lexvla search --index index/ --checkpoint ckpt/ "a red circle"
    lexvla search --index index/ --checkpoint org/name --store store/ --json "a dog" "a cat"

The way pyserini users search without a server: the query goes through the model's text encoder
(``--mode model``), the checkpoint's query table (``--mode table``, no language model) or the
tokenizer alone (``--mode words``), the index answers, and every hit is
scored and explained by ``indexer.scoring``, the same code the service's ``/search`` and
``/explain`` run: a hit's score is the sum of its matched words' contributions
``query_weight x image_weight``. ``--json`` prints what the service would return (hits with
``matched`` words, and with ``--store`` each hit's ``metadata`` record); the text output lists
each hit's heaviest words.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import scipy.sparse as sp

from indexer.engines import open_index
from indexer.engines.base import SearchIndex
from indexer.engines.versions import resolve
from indexer.scoring import ScoredHit, arrangement, is_exact, search, top_words
from indexer.store import CorpusStore
from model.backbones import BackboneLoadError
from model.protocols import LexicalModel


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lexvla search", description=__doc__.splitlines()[0])
    p.add_argument("queries", nargs="+", help="query texts (one search each)")
    p.add_argument("--index", required=True, help="index directory or one version directory")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or hub id org/name")
    p.add_argument("--store", help="corpus store: exact re-scoring and image paths")
    p.add_argument("--mode", choices=["model", "table", "words"], default="model")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--min-score", type=float, default=0.0)
    p.add_argument("--matched", type=int, default=10, help="matched words listed per hit")
    p.add_argument("--rescore-factor", type=int, default=4, help="for approximate engines")
    p.add_argument(
        "--where", type=json.loads, help='metadata conditions as JSON: {"album": "Trip"}'
    )
    p.add_argument("--sort", default="relevance", help="relevance, FIELD or -FIELD (descending)")
    p.add_argument("--facet", action="append", default=[], help="count a field (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON (one object per query)")
    return p


def query_row(model: LexicalModel, text: str, mode: str) -> sp.csr_matrix:
    """The sparse query vector of ``text`` (as the service builds it for that mode)."""
    if mode == "words":
        from model import bag_of_words_row

        return bag_of_words_row(text, model.tokenizer, model.vocabulary)
    if mode == "table":
        from model.query_table import require_table

        return require_table(model).encode_row(text)
    return model.sparsify(model.encode_texts([text]))


def _hit_json(
    rank: int, hit: ScoredHit, index: SearchIndex, store: CorpusStore | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"rank": rank, "id": hit.id, "score": hit.score}
    if index.fields is not None:
        out["metadata"] = index.fields.records([hit.id]).get(hit.id, {})
    if store is not None:
        with contextlib.suppress(KeyError):  # in the index but not (yet) in the store
            record = store.metadata(hit.id)
            out["path"] = record.path
            out.setdefault("metadata", record.metadata)
    out["matched"] = [{k: v for k, v in asdict(c).items() if k != "index"} for c in hit.matched]
    out["other_matched_words"] = hit.other_words
    out["other_contribution"] = hit.other_contribution
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from model import LexVLA

    version = resolve(args.index)
    model = LexVLA.from_pretrained(args.checkpoint, device=args.device)
    index = open_index(version, model.vocabulary.hash)
    store = (
        CorpusStore.open(args.store, expected_vocabulary=model.vocabulary) if args.store else None
    )
    results = []
    try:
        arrange = arrangement(index.fields, args.where, args.sort, args.facet)
        for text in args.queries:
            row = query_row(model, text, args.mode)
            outcome = search(
                index, store, model.vocabulary, row, exact=is_exact(index), top_k=args.top_k,
                offset=args.offset, min_score=args.min_score, matched_limit=args.matched,
                rescore_factor=args.rescore_factor, arrange=arrange,
            )  # fmt: skip
            results.append({
                "query": text, "mode": args.mode, "active_words": int(row.nnz),
                "query_words": [{"word": w, "weight": v} for w, v in top_words(row, model.vocabulary, 20)],
                "index_version": version.name, "notes": outcome.notes,
                "matches": outcome.matches, "facets": outcome.facets,
                "hits": [_hit_json(args.offset + n + 1, h, index, store) for n, h in enumerate(outcome.hits)],
            })  # fmt: skip
    finally:
        if store is not None:
            store.close()
    return results


def _print_text(results: list[dict[str, Any]]) -> None:
    for r in results:
        words = ", ".join(f"{w['word']} {w['weight']:.3f}" for w in r["query_words"][:8])
        print(f"query: {r['query']}  ({r['active_words']} active words: {words})")
        for note in r["notes"]:
            print(f"  note: {note}")
        for name, counts in r["facets"].items():
            print(f"  {name}: " + ", ".join(f"{v} {n}" for v, n in counts.items()))
        for h in r["hits"]:
            matched = ", ".join(f"{m['word']} {m['contribution']:.4f}" for m in h["matched"][:6])
            more = f" (+{h['other_matched_words']} more)" if h["other_matched_words"] else ""
            print(f"{h['rank']:>4}  {h['score']:.4f}  {h['id']}  = {matched}{more}")


def main(argv: Sequence[str] | None = None) -> int:
    from indexer.quiet import quiet_libraries

    quiet_libraries()
    args = parser().parse_args(argv)
    try:
        results = run(args)
    except (OSError, ValueError, KeyError, BackboneLoadError) as exc:  # paths, vocabularies
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"lexvla search: {' '.join(str(message).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1, ensure_ascii=False))
    else:
        _print_text(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
