"""Batch indexing: image corpus -> sparse vectors -> corpus store -> search index.

``model.data`` sources (folder, manifest, webdataset; shared with training) -> ``decode``
(RGB image, what the store records, thumbnails) -> the model's image encoder -> ``store`` (the
record: CSR shards, SQLite ``catalog``, thumbnails) -> ``engines`` (memory and Lucene search
indexes, versioned directories). ``runner`` drives a resumable job (its settings: ``job``; the
index it publishes: ``build``), ``cli`` is ``lexvla index``, ``scoring`` scores hits with
per-word contributions (for ``search``, which is ``lexvla search``, and for the service),
``export`` writes JSONL for other tools.
"""
