"""Batch indexing: image corpus -> sparse vectors -> corpus store -> search index.

``model.data`` sources (folder, manifest, webdataset; shared with training) -> ``decode`` (RGB
image, what the store records, thumbnails; run in ``loader``'s worker processes) -> the model's
image encoder -> ``store`` (the record: CSR shards, read in place by ``shard_files``, SQLite
``catalog``, thumbnails) -> ``engines`` (search indexes in versioned directories; one sub-package per engine, memory,
compact, lucene and qdrant, behind one registry). ``runner`` drives a resumable job (its
settings: ``job``; the index it publishes: ``build``), ``merge`` combines the stores of sharded
jobs, ``cli`` is ``lexvla index``, ``scoring`` scores hits with per-word contributions (its
compiled part: ``scoring_kernels``; for ``search``, which is ``lexvla search``, and for the
service), ``filters`` holds the word filters every engine applies, ``metadata`` the per-image
metadata fields and their types (read at indexing by ``metadata_job``), ``export`` writes JSONL
for other tools, ``quiet`` silences the libraries' own logging.
"""
