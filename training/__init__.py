"""Training LexVLA: produces the checkpoints the indexer and the service load.

Entry points: ``lexvla train`` / ``lexvla eval`` (``training.cli``), ``torchrun -m training``
(``training/__main__.py``), and ``training.loop.train(config)`` from Python.

Modules: ``config`` (the pydantic training config and presets), ``distributed`` (all
process-group code), ``setup`` (building the model), ``module`` (the training-time forward and
DDP), ``optim`` (AdamW groups, cosine schedule), ``step`` (one optimisation step), ``stream``
(full, resumable batches), ``checkpoints`` (atomic checkpoints, resume state), ``metrics``
(JSONL, TensorBoard, progress bar), ``loop`` (the run), ``query_table`` (the stage that distils
the text encoder into a query table), ``data/`` (data sources, synthetic shapes), ``pretrain/``
(pretraining the tiny backbones on the shapes) and ``evaluation/`` (retrieval, PatchDis,
vocabulary usage).
"""
