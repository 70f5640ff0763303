"""The online service's decision log: append-only JSON lines, one per decision, durable as
configured (``deploy.decision_log_policy``).

Why a policy: a decision the service answered must be in the log for an auditor (and
``deploy.replay``) to re-score it. Each line is written whole and flushed to the OS at
once; ``fsync`` says when the OS is made to put it on disk:

- ``always``: after every line, before the answer goes out (a crash of the machine loses
  nothing answered; costs one disk sync per decision);
- ``interval``: at most ``fsync_interval`` after a line is written (a background thread;
  a power loss loses at most that much);
- ``never``: the OS decides (the default, as before; a killed process loses nothing, a
  power loss what the OS had not written).

Lines are serialised by orjson (12 instead of 53 µs of CPU per decision with its features
than ``json.dumps``: ``python bench/profile_service.py --parts 1000``): NaN is written as ``null`` (valid JSON; readers take both as missing), and
datetimes go through the log's ``default`` (ISO 8601, as before). Each line reaches the
file in one ``write`` on an ``O_APPEND`` file: whole, even with several workers.

Rotation keeps the log bounded: when the file would pass ``max_bytes`` or is older than
``max_age``, it is renamed ``<name>.1`` (``.1`` to ``.2`` and so on) and a new file is
started; only ``keep`` rotated files are kept. Readers take them oldest first
(:func:`aml_pipeline.jsonl.rotated_files`) and skip a torn last line.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from aml_pipeline.errors import UserError
from aml_pipeline.timeutil import config_duration_us

FSYNC = ("always", "interval", "never")
#: one line per record: datetimes through the log's ``default``, numpy scalars as numbers
LINE = orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_SERIALIZE_NUMPY


class DecisionLog:
    """Append-only JSON lines with an fsync policy and rotation (see module doc)."""

    def __init__(self, path: str | Path, fsync: str = "never", fsync_interval_s: float = 1.0, max_bytes: int = 0,
                 max_age_s: float = 0.0, keep: int = 10, default: Callable[[Any], Any] | None = None):
        if fsync not in FSYNC:
            raise UserError(f"deploy.decision_log_policy.fsync={fsync!r}; allowed: {', '.join(FSYNC)}")
        if fsync == "interval" and fsync_interval_s <= 0:
            raise UserError(f"deploy.decision_log_policy.fsync_interval={fsync_interval_s!r}: must be a positive duration")
        if max_bytes < 0 or max_age_s < 0 or keep < 1:
            raise UserError("deploy.decision_log_policy: max_bytes and max_age must be >= 0 and keep >= 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync, self.fsync_interval_s = fsync, float(fsync_interval_s)
        self.max_bytes, self.max_age_s, self.keep = int(max_bytes), float(max_age_s), int(keep)
        self._default = default
        self._lock = threading.Lock()
        self._open()
        self._dirty = False
        self.syncs = 0
        self.rotations = 0
        self._stop = threading.Event()
        self._thread = None
        if fsync == "interval":
            self._thread = threading.Thread(target=self._sync_loop, name="decision-log-fsync", daemon=True)
            self._thread.start()

    def _open(self) -> None:
        self._f = open(self.path, "ab", buffering=0)
        self._size = self._f.tell()
        self._opened = time.time() if self._size == 0 else os.stat(self.path).st_mtime
        if self._size:  # the age of an existing file counts from its first line, as near as we know
            self._opened = min(self._opened, os.stat(self.path).st_ctime)

    def _sync(self) -> None:
        os.fsync(self._f.fileno())
        self.syncs += 1
        self._dirty = False

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            with self._lock:
                if self._dirty and not self._f.closed:
                    self._sync()

    def _rotate(self) -> None:
        self._f.flush()
        if self.fsync != "never":
            self._sync()
        self._f.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        if oldest.exists():
            oldest.unlink()
        for n in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{n}")
            if src.exists():
                src.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._open()
        self._opened = time.time()

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, default=self._default, option=LINE)
        n = len(line)
        with self._lock:
            if self._size and ((self.max_bytes and self._size + n > self.max_bytes)
                               or (self.max_age_s and time.time() - self._opened >= self.max_age_s)):
                self._rotate()
            self._f.write(line)
            self._size += n
            if self.fsync == "always":
                self._sync()
            else:
                self._dirty = True

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                if self.fsync != "never" and self._dirty:
                    self._sync()
                self._f.close()


def open_decision_log(path: str | Path, policy, default: Callable[[Any], Any] | None = None) -> DecisionLog:
    """The log ``deploy.decision_log`` names, with ``deploy.decision_log_policy`` (None: defaults)."""
    if policy is None:
        return DecisionLog(path, default=default)
    def seconds(key: str, allow_zero: bool) -> float:
        text = policy.get(key)
        if text in (None, 0, "0") and allow_zero:
            return 0.0
        return config_duration_us(text, f"deploy.decision_log_policy.{key}", allow_zero) / 1e6

    fsync = str(getattr(policy.get("fsync"), "value", policy.get("fsync")))
    return DecisionLog(path, fsync=fsync, fsync_interval_s=seconds("fsync_interval", False),
                       max_bytes=int(policy.get("max_bytes") or 0), max_age_s=seconds("max_age", True),
                       keep=int(policy.get("keep") or 10), default=default)
