"""The ``lexvla`` command: one console script that dispatches to each package's CLI (``cli``),
and ``lexvla demo`` (``demo``: train, index, evaluate, serve; ``demo_eval``: what it measures)."""
