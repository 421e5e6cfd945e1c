"""The ``lexvla`` command: one console script that dispatches to each package's CLI."""
