"""``lexvla keys add|list|revoke``: the service's API keys, in the file ``LEXVLA_KEYS_FILE`` names.

A running service re-reads the file when it changes, so these commands take effect without a
restart (``service.core.keys`` has the format and the rules).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from service.core.keys import RIGHTS, KeysError, add_key, read_keys, revoke_key


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lexvla keys", description="Manage the service's API keys.")
    p.add_argument(
        "--file",
        default=os.environ.get("LEXVLA_KEYS_FILE"),
        help="the keys file (default: $LEXVLA_KEYS_FILE)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="make a key and print it once")
    add.add_argument(
        "--collection",
        action="append",
        default=[],
        help="a collection the key may see (repeat for several; '*' for every collection)",
    )
    add.add_argument(
        "--rights", default="search", help=f"comma-separated, of {', '.join(RIGHTS)} (search)"
    )
    add.add_argument("--name", default="", help="a label to recognise the key by")
    sub.add_parser("list", help="the keys (ids, names, collections, rights; never the keys)")
    revoke = sub.add_parser("revoke", help="remove a key: it stops working at once")
    revoke.add_argument("id", help="the key's id (see list)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.file:
        print(
            "lexvla keys: no keys file: pass --file PATH or set LEXVLA_KEYS_FILE", file=sys.stderr
        )
        return 2
    try:
        if args.command == "add":
            rights = [r.strip() for r in args.rights.split(",") if r.strip()]
            key, entry = add_key(args.file, args.collection, rights, args.name)
            print(key)
            print(
                f"key {entry.id}: collections {', '.join(entry.collections)}; rights "
                f"{', '.join(entry.rights)}. Keep it now: it is not stored and cannot be shown "
                "again.",
                file=sys.stderr,
            )
        elif args.command == "list":
            for e in read_keys(args.file):
                print(
                    f"{e.id}  {e.name or '-'}  collections={','.join(e.collections)}  "
                    f"rights={','.join(e.rights)}  created={e.created}"
                )
        else:
            entry = revoke_key(args.file, args.id)
            print(f"revoked key {entry.id} ({entry.name or 'no name'})", file=sys.stderr)
    except (KeysError, OSError) as exc:
        print(f"lexvla keys: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
