"""What every package shares, and nothing of any one of them.

- ``atomic``: crash-safe file and directory writes (temporary name, fsync, rename) and the
  clock every record is stamped with (``now_iso``);
- ``flags``: command-line flags generated from the pydantic model a command fills;
- ``lazy``: lazy package exports (PEP 562), so importing a package costs only what is used;
- ``quiet``: the command-line tools' switch for the libraries' progress bars and warnings.

``model``, ``training``, ``indexer``, ``service`` and ``lexvla`` import it; it imports none of
them, and no torch, web or index library (``quiet`` reaches transformers' logging only when
called; ``flags`` needs pydantic).
"""
