"""``python -m training`` and ``torchrun ... -m training``: the same commands as ``lexvla``.

Single process (CPU or one GPU)::

    lexvla train --config run.json                   # or: python -m training train --config run.json

One node, 8 GPUs (DDP, NCCL)::

    torchrun --standalone --nproc-per-node 8 -m training train --config run.json

Several nodes (run on every node; node 0's address as the rendezvous endpoint)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint node0.example:29500 --rdzv-id lexvla-run1 \\
        -m training train --config run.json

On CPUs, gloo is used instead of NCCL (``--nproc-per-node 2`` on a laptop works). The output
folder must be shared by all nodes: rank 0 writes checkpoints there and every rank reads them
when a run resumes. ``batch_size`` is the global batch: each of the N processes takes
``batch_size / N``. A run killed on any node is resumed by starting the same command again.
If the first argument is not a command, ``train`` is assumed.
"""

from __future__ import annotations

import sys

from training.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] not in ("train", "eval", "-h", "--help"):
        args = ["train", *args]
    sys.exit(main(args))
