"""JSON-lines files as append-only logs write them: a torn last line is not an error.

A writer killed mid-line (power loss, SIGKILL between ``write`` and the next) leaves a last
line without its newline, often cut inside a JSON value. Every complete line was written
whole before it, so a reader keeps those and skips the torn tail, saying so once per file
instead of refusing the whole log. A last line without a newline that still parses as JSON
(a file written by hand) is kept.

Rotated logs (``decisions.jsonl.1`` ... ``.N``, ``.N`` the oldest; see
:mod:`aml_pipeline.serving.decision_log`) are read oldest first by :func:`rotated_files`.

The write side of files that are replaced whole (the streaming scorer's ``state.json``, its
row and pending logs, snapshots, the outputs of a micro-batch) is :func:`replace_durably`:
written to a temporary name, flushed and ``fsync``-ed, renamed over the old one, and the
directory ``fsync``-ed so the rename itself survives a power loss. Without the file's fsync,
a crash after the rename can leave the new name pointing at an empty or partial file (ext4
and XFS may commit the rename before the data); without the directory's, the old name.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path


def complete_bytes(path: str | Path, warn: bool = True) -> bytes:
    """The file's bytes up to its last complete line (see module doc)."""
    data = Path(path).read_bytes()
    if not data or data.endswith(b"\n"):
        return data
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        json.loads(tail)
        return data + b"\n"
    except ValueError:
        pass
    if warn:
        print(f"warning: {path}: skipped a partial last line ({len(tail):,} bytes, no newline: a write cut short)",
              file=sys.stderr, flush=True)
    return data[:cut]


def read_lines(path: str | Path, warn: bool = True) -> list[str]:
    """The complete lines of a JSON-lines file (a torn last line skipped; see module doc)."""
    return complete_bytes(path, warn).decode("utf-8").splitlines()


def rotated_files(path: str | Path) -> list[Path]:
    """``path`` and its rotated predecessors, oldest first (``path.N`` ... ``path.1``, ``path``)."""
    p = Path(path)
    pattern = re.compile(re.escape(p.name) + r"\.(\d+)$")
    older = []
    if p.parent.is_dir():
        for q in p.parent.iterdir():
            m = pattern.match(q.name)
            if m and q.is_file():
                older.append((int(m.group(1)), q))
    return [q for _, q in sorted(older, reverse=True)] + ([p] if p.is_file() else [])


def fsync_dir(directory: str | Path) -> None:
    """Make a directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: str | Path, content: str | bytes | Callable[[Path], None]) -> None:
    """Replace ``path`` whole, durably (see module doc): ``content`` is text (UTF-8), bytes,
    or a function writing the file at the path it is given (``frame.write_parquet``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if callable(content):
        content(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    else:
        with open(tmp, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
