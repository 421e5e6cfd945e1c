"""API keys: which collections a caller may see and what it may do there.

The keys file (``LEXVLA_KEYS_FILE``, JSON, written by ``lexvla keys``) holds one entry per key::

    {"format": "lexvla-keys", "keys": [{"id": "3f9a1c07", "name": "team-a",
      "collections": ["team-a"], "rights": ["search", "write"],
      "created": "2026-12-07T16:00:00+00:00", "sha256": "<hex digest of the whole key>"}]}

A key reads ``lvk_<id>_<secret>``: 8 hex characters that find its entry, then 32 random bytes
(URL-safe base64). Only the SHA-256 of the whole key is stored, and the key is printed once, when
it is made. A plain hash suffices because the secret is random, not a guessable password (slow
password hashes such as scrypt exist for those). ``collections`` of ``["*"]`` means every
collection. Rights: ``search`` (search, explain, images and thumbnails), ``write`` (add, change
and delete images of its collections), ``admin`` (everything, ``/admin/*`` included).

The service re-reads the file when it changes (its inode, size or modification time, checked at
most once per ``CHECK_S``), so keys are added, rotated and revoked without a restart; a file that
stops parsing keeps the last good keys and is logged. The single ``LEXVLA_API_KEY`` remains an
admin key for every collection.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common.atomic import atomic_write_json, now_iso

log = logging.getLogger("service")

FORMAT = "lexvla-keys"
RIGHTS = ("search", "write", "admin")
ALL = "*"
CHECK_S = 1.0
COLLECTION = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_KEY = re.compile(r"lvk_([0-9a-f]{8})_[A-Za-z0-9_-]{43}")


class KeysError(ValueError):
    """A keys file or a command's arguments are wrong (one line: what and what to do)."""


@dataclass(frozen=True)
class Access:
    """What one request may do: ``collections`` it sees (None: all) and its ``rights``."""

    collections: frozenset[str] | None
    rights: frozenset[str]

    def can(self, right: str) -> bool:
        return right in self.rights or "admin" in self.rights

    def sees(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


ADMIN = Access(None, frozenset(RIGHTS))
OPEN = Access(None, frozenset({"search"}))  # no keys configured: anyone may search everything


@dataclass(frozen=True)
class KeyEntry:
    id: str
    name: str
    collections: tuple[str, ...]
    rights: tuple[str, ...]
    created: str
    sha256: str

    @property
    def access(self) -> Access:
        seen = None if ALL in self.collections else frozenset(self.collections)
        return Access(seen, frozenset(self.rights))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_collection(name: str) -> str:
    if name != ALL and not COLLECTION.fullmatch(name):
        raise KeysError(
            f"{name!r} is not a collection name: use 1-64 lowercase letters, digits, '_', '.' "
            "or '-', starting with a letter or digit (or '*' for every collection)"
        )
    return name


def check_rights(rights: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(rights) - set(RIGHTS))
    if unknown or not rights:
        raise KeysError(f"unknown rights {unknown or rights}: choose from {', '.join(RIGHTS)}")
    return tuple(r for r in RIGHTS if r in rights)


def read_keys(path: str | Path) -> list[KeyEntry]:
    """The entries of a keys file (none if it does not exist yet); KeysError if it is corrupt."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise KeysError(f"cannot read the keys file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise KeysError(f"{path} is not a keys file (written by 'lexvla keys add')")
    try:
        return [
            KeyEntry(
                **{
                    **entry,
                    "collections": tuple(entry["collections"]),
                    "rights": tuple(entry["rights"]),
                }
            )
            for entry in data["keys"]
        ]
    except (KeyError, TypeError) as exc:
        raise KeysError(f"{path} has a malformed entry ({exc}); fix or remove it") from None


def write_keys(path: str | Path, entries: list[KeyEntry]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"format": FORMAT, "keys": [asdict(e) for e in entries]})
    os.chmod(path, 0o600)  # hashes only, but nobody else needs to read them


def add_key(
    path: str | Path, collections: list[str], rights: list[str], name: str = ""
) -> tuple[str, KeyEntry]:
    """Make a key for ``collections`` with ``rights``; (the key, shown once; its entry)."""
    if not collections:
        raise KeysError("name at least one collection (--collection NAME, or '*' for all)")
    entries = read_keys(path)
    taken = {e.id for e in entries}
    key_id = secrets.token_hex(4)
    while key_id in taken:
        key_id = secrets.token_hex(4)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    key = f"lvk_{key_id}_{secret}"
    entry = KeyEntry(
        key_id,
        name,
        tuple(dict.fromkeys(check_collection(c) for c in collections)),
        check_rights(rights),
        now_iso(),
        _digest(key),
    )
    write_keys(path, [*entries, entry])
    return key, entry


def revoke_key(path: str | Path, key_id: str) -> KeyEntry:
    entries = read_keys(path)
    found = [e for e in entries if e.id == key_id]
    if not found:
        raise KeysError(f"no key {key_id!r} in {path} ('lexvla keys list' shows the ids)")
    write_keys(path, [e for e in entries if e.id != key_id])
    return found[0]


class KeyRing:
    """The service's view of the keys file, re-read when the file changes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._by_id: dict[str, KeyEntry] = {}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < CHECK_S:
            return
        with self._lock:
            self._checked = now
            try:
                st = os.stat(self.path)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                stamp = None
            if stamp == self._stamp and not force:
                return
            try:
                entries = read_keys(self.path)
            except KeysError as exc:
                if force:
                    raise
                log.error("%s; keeping the keys read before", exc)
                return
            self._by_id = {e.id: e for e in entries}
            self._stamp = stamp

    def access(self, key: str) -> Access | None:
        """The access ``key`` grants, or None for a key that is malformed, unknown or revoked."""
        self.refresh()
        match = _KEY.fullmatch(key)
        entry = self._by_id.get(match.group(1)) if match else None
        if entry is None or not secrets.compare_digest(entry.sha256, _digest(key)):
            return None
        return entry.access
