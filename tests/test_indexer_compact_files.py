"""indexer.engines.compact.index on disk (indexer.engines.compact.files): versions that share their
blocks, publishing, the checks that refuse an index this code cannot read, two processes
sharing one mapped index, and builds spilled to disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from compact_fixtures import V

from indexer.engines import open_index, publish
from indexer.engines.compact.index import CompactIndex, ImpactPruning

ROOT = Path(__file__).resolve().parent.parent


def test_save_open_mmap_and_versions_share_blocks(tmp_path, corpus, pair):
    ids, _, queries = corpus
    compact, _ = pair
    first = publish(compact, tmp_path / "index")
    opened = open_index(tmp_path / "index")
    assert isinstance(opened, CompactIndex) and opened.count() == len(ids)
    post = opened._snap.blocks[0].post  # an ndarray view of the file's map (cheap to unbox)
    assert type(post) is np.ndarray and isinstance(post.base, np.memmap)
    for n in range(5):
        assert opened.search(queries[n], 10) == compact.search(queries[n], 10)
    assert opened.delete([ids[0]]) == 1
    second = publish(opened, tmp_path / "index")
    block = "blocks/b000000/post.npy"
    assert os.stat(first / block).st_ino == os.stat(second / block).st_ino  # hard-linked
    reopened = open_index(tmp_path / "index")
    assert reopened.count() == len(ids) - 1
    assert json.loads((second / "index.json").read_text())["deleted"] == 1


def test_publishing_merges_small_blocks_and_search_stays_within_the_bound(tmp_path, corpus):
    """Incremental adds leave small blocks; publishing merges them (deleted rows dropped) and
    the merged index answers as the unmerged one did, within the quantisation bound."""
    from indexer import filters as wf

    ids, rows, queries = corpus
    index = CompactIndex.create(V, pruning=None)
    index.block_rows = 2500
    for start in range(0, 3000, 300):  # ten adds of 300 images: ten small blocks
        index.add(ids[start : start + 300], rows[start : start + 300])
        index.build()
    assert len(index._snap.blocks) == 10
    assert index.delete(ids[10:20] + ids[600:900]) == 310  # one block left with no live image
    before = [index.search(queries[n], 10) for n in range(20)]
    having = wf.WordFilter(require=[int(rows[0].indices[np.argmax(rows[0].data)])])
    filtered = index.search(queries[0], 50, filters=having)
    opened = open_index(publish(index, tmp_path / "index"))
    assert opened.count() == 3000 - 310
    # blocks 0-8 (2,390 live rows) fill one block, in order, dead rows dropped; 9 did not fit
    assert [b.rows for b in opened._snap.blocks] == [2390, 300]
    exact = rows.toarray().astype(np.float64)
    for n in range(20):
        after = opened.search(queries[n], 10)
        bound = opened.error_bound(queries[n])
        scores = exact @ queries[n].toarray().ravel()
        for image_id, score in after:
            assert abs(score - scores[ids.index(image_id)]) <= bound
        overlap = {i for i, _ in after} & {i for i, _ in before[n]}
        assert len(overlap) >= 9
    assert {i for i, _ in opened.search(queries[0], 50, filters=having)} == {i for i, _ in filtered}
    with pytest.raises(KeyError):
        opened.vectors_of([ids[650]])
    np.testing.assert_allclose(
        opened.vectors_of([ids[2000]]).toarray(), rows[2000].toarray(), atol=max(opened._errors)
    )


def test_an_index_of_another_block_layout_is_refused(tmp_path, corpus):
    ids, rows, _ = corpus
    index = CompactIndex.create(V)
    index.add(ids[:100], rows[:100])
    manifest = publish(index, tmp_path / "index") / "index.json"
    meta = json.loads(manifest.read_text())
    del meta["params"]["layout"]  # as written before byte-gap segments
    manifest.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"block layout 1.*lexvla index reindex"):
        open_index(tmp_path / "index")


def test_saved_pruning_settings_old_and_unknown(tmp_path, corpus):
    """An index saved before the long-query falloff opens with its defaults; one saved by a
    later version with settings this one lacks is refused with a message, not a TypeError."""
    ids, rows, _ = corpus
    index = CompactIndex.create(V, pruning=ImpactPruning(budget=0.2))
    index.add(ids[:100], rows[:100])
    manifest = publish(index, tmp_path / "index") / "index.json"
    meta = json.loads(manifest.read_text())
    for field in ("long_words", "falloff"):
        del meta["params"]["pruning"][field]
    manifest.write_text(json.dumps(meta))
    assert open_index(tmp_path / "index").pruning == ImpactPruning(budget=0.2)
    meta["params"]["pruning"]["stop_early"] = True
    manifest.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not know \(stop_early\).*upgrade lexvla"):
        open_index(tmp_path / "index")


def test_two_processes_share_one_mapped_index(tmp_path, corpus, pair):
    _, _, queries = corpus
    compact, _ = pair
    path = publish(compact, tmp_path / "index")
    sp.save_npz(tmp_path / "q.npz", queries[:5])
    script = (
        "import json, sys, scipy.sparse as sp\n"
        "from indexer.engines import open_index\n"
        f"index = open_index({str(path)!r})\n"
        f"qs = sp.load_npz({str(tmp_path / 'q.npz')!r})\n"
        "print(json.dumps([index.search(qs[i], 10) for i in range(qs.shape[0])]))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    expected = [[list(h) for h in compact.search(queries[i], 10)] for i in range(5)]
    assert outputs[0] == outputs[1] == expected


def test_spilled_build_holds_blocks_on_disk(tmp_path, corpus):
    ids, rows, _queries = corpus
    index = CompactIndex.create(V, pruning=None, spill_dir=tmp_path / "spill")
    index.block_rows = 2000
    index.add(ids, rows)
    index.build()
    assert all(isinstance(b.post.base, np.memmap) for b in index._snap.blocks)
    saved = tmp_path / "saved"
    index.save(saved)
    (spilled,) = (tmp_path / "spill").iterdir()  # a fresh folder of this build's own
    assert (
        os.stat(saved / "blocks/b000000/post.npy").st_ino
        == os.stat(spilled / "s000000/post.npy").st_ino
    )
    # a second build spilling into the same folder never writes over the first one's blocks
    before = index.search(rows[0], 5, pruning=None)
    other = CompactIndex.create(V, pruning=None, spill_dir=tmp_path / "spill")
    other.block_rows = 2000
    other.add(ids, rows[::-1])  # other rows under the same ids
    other.build()
    assert CompactIndex.open(saved).search(rows[0], 5, pruning=None) == before
    (saved / "blocks/b000000/post.npy").unlink()
    with pytest.raises(ValueError, match="not a complete compact block"):
        CompactIndex.open(saved)
