"""Batch indexing: image corpus -> sparse vectors -> corpus store -> search index.

``sources`` (folder, manifest, webdataset) -> ``decode`` (robust RGB decoding, skip reasons) ->
the model's image encoder -> ``store`` (the record: CSR shards, SQLite ``catalog``, thumbnails)
-> ``engines`` (memory and Lucene search indexes, versioned directories). ``runner`` drives a
resumable job, ``cli`` is ``lexvla index``, ``export`` writes JSONL for other tools.
"""
