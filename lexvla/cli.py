"""``lexvla <command>``: dispatch to the package that owns the command.

Each package's CLI is imported only when its command runs, so ``lexvla model params`` needs no
web or index libraries, and ``lexvla serve`` needs no training ones.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module with main(argv), argv prefix, help)
COMMANDS: dict[str, tuple[str, list[str], str]] = {
    "model": ("model.cli", [], "inspect presets, parameter counts, make a tiny checkpoint"),
    "encode": ("model.cli", ["encode"], "print the top words of texts or images"),
    "train": ("training.cli", ["train"], "train LexVLA (single process or under torchrun)"),
    "eval": ("training.cli", ["eval"], "retrieval recall, PatchDis and vocabulary usage"),
    "index": ("indexer.cli", [], "build, update, merge and inspect search indexes"),
    "search": ("indexer.search", [], "search an index and explain the hits, no server"),
    "serve": ("service.cli", [], "run the search service"),
    "keys": ("service.keys_cli", [], "the service's API keys: add, list, revoke"),
    "demo": ("lexvla.demo", [], "the main job: train tiny, index, serve"),
}


def usage() -> str:
    lines = ["usage: lexvla <command> [args]", "", "commands:"]
    lines += [f"  {name:8s} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines.append("\nrun `lexvla <command> --help` for a command's options")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"lexvla: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, prefix, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(
            f"lexvla {command}: a dependency is missing ({exc.name}). Install the project's "
            "extras: pip install 'lexvla[train,index,service]'",
            file=sys.stderr,
        )
        return 2
    return int(module.main(prefix + rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
