"""Linux probes the multi-process server tests use: a process's children and liveness, the
sockets listening on a port, connections opened together, and which worker answered."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def listening_sockets(port: int) -> int:
    """TCP sockets listening on ``port`` (Linux's socket tables)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                count += fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return count


def connections_at_once(port: int, n: int) -> list:
    """``n`` connections started together (as a load generator or a proxy's pool opens them),
    returned once all are established."""
    import select
    import socket

    held = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    for sock in held:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
    pending = set(held)
    while pending:
        _, ready, _ = select.select([], list(pending), [], 30)
        assert ready, "connections did not complete"
        pending -= set(ready)
    for sock in held:
        sock.setblocking(True)
        sock.settimeout(30)
    return held


def healthz_pid(sock) -> int:
    """GET /healthz on an open connection; the answering worker's pid."""
    import json

    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return int(json.loads(body)["pid"])
