"""Generation speed of the synthetic shapes data: milliseconds per 224 x 224 image.

    python bench/shapes.py [--n 200] [--target-ms 20]

Renders ``--n`` samples with ``training.data.render_sample`` after one warm-up call (it fills
the outline cache) and prints the mean time per image as JSON. The data loader keeps a training
step fed only if an image takes well under a step's share; ``--target-ms`` is that budget, and
the script exits 1 when the mean is over it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from training.data import render_sample


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images to render")
    ap.add_argument("--target-ms", type=float, default=20.0, help="budget per image")
    args = ap.parse_args(argv)
    render_sample(0)  # warm the outline cache
    start = time.perf_counter()
    for i in range(args.n):
        render_sample(i, seed=5)
    per_image_ms = (time.perf_counter() - start) / args.n * 1e3
    result = {
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "images": args.n,
        "ms_per_image": round(per_image_ms, 3),
        "target_ms": args.target_ms,
    }
    print(json.dumps(result))
    return 0 if per_image_ms <= args.target_ms else 1


if __name__ == "__main__":
    sys.exit(main())
