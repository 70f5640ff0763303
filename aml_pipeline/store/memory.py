"""The embedded backend: the store lives in the scoring process (the default).

Fast (no network, no decoding) and simple; its state lasts as long as the process, so a
restarted service warms it again from the validated history (``deploy.warm_from``).

With a retention (``layout.retention_us``) it stays bounded: accounts are kept in the order
they were last touched with their latest event time, event ids in the order they were
seen with theirs, and after every append the oldest of each are dropped while they are
older than the newest event time seen minus the retention (amortised O(1): each entry is
dropped once).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from aml_pipeline.store.base import DST, ID, SRC, T, OnlineStore, Reading, Row, StoreLayout, latest_of, payers, trim_start

_EMPTY: list = []


class _Set:
    """One account's rows in one direction, ordered by time (arrival order within an instant)."""

    __slots__ = ("times", "rows")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.rows: list[Row] = []

    def add(self, row: Row, window_us: int) -> None:
        t = row[T]
        if not self.times or t >= self.times[-1]:
            self.times.append(t)
            self.rows.append(row)
        else:  # late event: keep the set ordered
            i = bisect_right(self.times, t)
            self.times.insert(i, t)
            self.rows.insert(i, row)
        self.trim(window_us)

    def trim(self, window_us: int) -> None:
        start = trim_start(self.times, window_us)
        if start:
            del self.times[:start]
            del self.rows[:start]

    def between(self, start_us: int, end_us: int) -> list[Row]:
        times = self.times
        j = bisect_left(times, end_us)
        i = bisect_left(times, start_us, 0, j)
        return self.rows[i:j]

    def latest_before(self, end_us: int) -> int | None:
        j = bisect_left(self.times, end_us)
        return self.times[j - 1] if j else None


class MemoryStore(OnlineStore):
    """Dicts of per-account sets plus a TTL map of seen event ids and their decisions."""

    backend = "memory"

    def __init__(self, layout: StoreLayout, dedup_ttl_s: float = 30 * 86400.0):
        super().__init__(layout)
        self.dedup_ttl_s = float(dedup_ttl_s)
        self._sent: dict[str, _Set] = {}
        self._received: dict[str, _Set] = {}
        #: event id -> (expiry (monotonic s), decision or None, event time µs); insertion-ordered for purging.
        self._seen: OrderedDict[str, tuple[float, dict | None, int]] = OrderedDict()
        self._commits = 0
        self.retention_us = int(layout.retention_us or 0)
        #: newest event time appended (µs), and account -> its latest event time, least
        #: recently touched first (only kept with a retention).
        self._newest: int | None = None
        self._last: OrderedDict[str, int] = OrderedDict()
        self.evicted_accounts = 0
        self.evicted_ids = 0
        self._lock = threading.RLock()

    # -- reads ----------------------------------------------------------------------------
    def _cutoff(self) -> int | None:
        """Event time before which state is forgotten (None: no retention, or nothing yet)."""
        if not self.retention_us or self._newest is None:
            return None
        return self._newest - self.retention_us

    def _decision(self, event_id: str) -> tuple[bool, dict | None]:
        entry = self._seen.get(event_id)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        cutoff = self._cutoff()
        if cutoff is not None and entry[2] < cutoff:
            return False, None
        return True, entry[1]

    def read(self, event_id: str, accounts: Iterable[str], start_us: int, end_us: int) -> Reading:
        with self._lock:
            out = Reading(decision=self._decision(event_id)[1])
            if out.decision is not None:
                return out
            for acc in accounts:
                s, r = self._sent.get(acc), self._received.get(acc)
                sent = s.between(start_us, end_us) if s else _EMPTY
                received = r.between(start_us, end_us) if r else _EMPTY
                out.sent[acc], out.received[acc] = sent, received
                latest = latest_of(sent, received)
                if latest is None:  # nothing in the window: the previous event may be older
                    a = s.latest_before(end_us) if s else None
                    b = r.latest_before(end_us) if r else None
                    latest = max((x for x in (a, b) if x is not None), default=None)
                out.latest[acc] = latest
            return out

    def read_expanded(self, event_id: str, accounts, start_us: int, end_us: int,
                      expand_start_us: int | None, hubs: frozenset[str], expand_rows: int | None = None) -> Reading:
        """One pass: read the query accounts, then slice each new in-neighbour's received rows."""
        with self._lock:
            reading = self.read(event_id, accounts, start_us, end_us)
            if reading.decision is not None or expand_start_us is None:
                return reading
            table = self._received
            received = reading.received
            for x in payers([received[acc] for acc in accounts], expand_start_us, expand_rows):
                if x in received or x in hubs:
                    continue
                got = table.get(x)
                received[x] = _EMPTY if got is None else got.between(expand_start_us, end_us)
            return reading

    def read_received(self, accounts: Iterable[str], start_us: int, end_us: int) -> dict[str, list[Row]]:
        with self._lock:
            got = {}
            table = self._received
            for acc in accounts:
                r = table.get(acc)
                got[acc] = _EMPTY if r is None else r.between(start_us, end_us)
            return got

    # -- writes ---------------------------------------------------------------------------
    def _purge(self) -> None:
        now = time.monotonic()
        cutoff = self._cutoff()
        seen = self._seen
        while seen:
            key, (expiry, _, t) = next(iter(seen.items()))
            if expiry >= now and (cutoff is None or t >= cutoff):
                break
            seen.popitem(last=False)
            self.evicted_ids += 1

    def _remember(self, event_id: str, decision: dict | None, t_us: int) -> None:
        self._seen[event_id] = (time.monotonic() + self.dedup_ttl_s, decision, t_us)
        self._seen.move_to_end(event_id)

    def _touch(self, row: Row) -> None:
        """Note the row's time as its accounts' latest (with a retention only)."""
        if not self.retention_us:
            return
        t, last = row[T], self._last
        if self._newest is None or t > self._newest:
            self._newest = t
        for acc in (row[SRC], row[DST]):
            old = last.get(acc)
            if old is None or t > old:
                last[acc] = t
            last.move_to_end(acc)

    def expire(self) -> None:
        """Forget accounts idle, and event ids older, than the retention (see module doc)."""
        cutoff = self._cutoff()
        if cutoff is None:
            return
        with self._lock:
            last, sent, received = self._last, self._sent, self._received
            while last:
                acc, t = next(iter(last.items()))
                if t >= cutoff:
                    break
                last.popitem(last=False)
                sent.pop(acc, None)
                received.pop(acc, None)
                self.evicted_accounts += 1
            self._purge()

    def commit(self, row: Row, decision: dict | None) -> bool:
        with self._lock:
            event_id = row[ID]
            known, old = self._decision(event_id)
            if known:
                if decision is not None and old is None:
                    self._remember(event_id, decision, self._seen[event_id][2])
                return False
            w = self.layout.window_us
            self._sent.setdefault(row[SRC], _Set()).add(row, w)
            self._received.setdefault(row[DST], _Set()).add(row, w)
            self._remember(event_id, decision, row[T])
            self._touch(row)
            self._commits += 1
            if self.retention_us:
                self.expire()
            elif self._commits % 4096 == 0:
                self._purge()
            return True

    def warm(self, rows: Iterable[Row]) -> int:
        """Append many rows at once, trimming each set once at the end."""
        with self._lock:
            n = 0
            touched: set[int] = set()
            sets = []
            for row in rows:
                if self._decision(row[ID])[0]:
                    continue
                for table, acc in ((self._sent, row[SRC]), (self._received, row[DST])):
                    s = table.get(acc)
                    if s is None:
                        s = table[acc] = _Set()
                    if id(s) not in touched:
                        touched.add(id(s))
                        sets.append(s)
                    if s.times and row[T] < s.times[-1]:
                        i = bisect_right(s.times, row[T])
                        s.times.insert(i, row[T])
                        s.rows.insert(i, row)
                    else:
                        s.times.append(row[T])
                        s.rows.append(row)
                self._remember(row[ID], None, row[T])
                self._touch(row)
                n += 1
            for s in sets:
                s.trim(self.layout.window_us)
            self.expire()
            return n

    def remember_ids(self, event_ids: Iterable[str], times_us: Iterable[int]) -> None:
        """Record ids as seen (``known_ids``) with their event times, without storing rows:
        for a scorer that keeps the rows itself (the streaming scorer's columnar copy,
        streaming/history.py); the times let them expire with the retention."""
        with self._lock:
            for e, t in zip(event_ids, times_us):
                if not self._decision(e)[0]:
                    self._remember(e, None, t)
                if self.retention_us and (self._newest is None or t > self._newest):
                    self._newest = t
            self._purge()

    def sets(self) -> Iterable[tuple[str, str, list[Row]]]:
        """(direction, account, rows) of every set: ``sent`` / ``received``."""
        for acc, s in self._sent.items():
            yield "sent", acc, s.rows
        for acc, s in self._received.items():
            yield "received", acc, s.rows

    def busiest(self, n: int) -> list[tuple[str, int]]:
        with self._lock:
            rows: dict[str, int] = {}
            newest: dict[str, int] = {}
            for _, acc, set_rows in self.sets():
                if set_rows:
                    rows[acc] = rows.get(acc, 0) + len(set_rows)
                    t = set_rows[-1][T]
                    if t > newest.get(acc, t - 1):
                        newest[acc] = t
            return [(acc, newest[acc]) for acc in heapq.nlargest(n, rows, key=rows.__getitem__)]

    def seen_ids(self) -> list[str]:
        return list(self._seen)

    # -- misc -----------------------------------------------------------------------------
    def ping(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            rows = sum(len(s.rows) for s in self._sent.values())
            out = {"backend": self.backend, "accounts": len(set(self._sent) | set(self._received)), "events": rows,
                   "event_ids": len(self._seen)}
            if self.retention_us:
                out.update(retention_s=self.retention_us / 1e6, evicted_accounts=self.evicted_accounts,
                           evicted_ids=self.evicted_ids)
            return out

    # -- bulk access for micro-batch scorers (the streaming scorer) -------------------------
    def history_rows(self, accounts: Iterable[str], end_us: int, expand_start_us: int | None,
                     hubs: frozenset[str]) -> list[Row]:
        with self._lock:
            query = set(accounts)
            out: dict[str, Row] = {}
            neighbours: set[str] = set()
            for acc in query:
                for table in (self._sent, self._received):
                    s = table.get(acc)
                    if s is None:
                        continue
                    for r in s.between(-math.inf, end_us):
                        out[r[ID]] = r
                if expand_start_us is not None:
                    r_set = self._received.get(acc)
                    if r_set is not None:
                        neighbours.update(r[SRC] for r in r_set.between(expand_start_us, end_us))
            neighbours.difference_update(query)
            neighbours.difference_update(hubs)
            for x in neighbours:
                r_set = self._received.get(x)
                if r_set is None:
                    continue
                for r in r_set.between(expand_start_us, end_us):
                    out[r[ID]] = r
            return list(out.values())

    def known_ids(self, event_ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {e for e in event_ids if self._decision(e)[0]}

    def last_batch(self, stream: str) -> int | None:
        return getattr(self, "_batches", {}).get(stream)

    def set_last_batch(self, stream: str, batch_id: int) -> None:
        if not hasattr(self, "_batches"):
            self._batches: dict[str, int] = {}
        self._batches[stream] = int(batch_id)
