"""The online feature store's contract: each account's recent events, by direction.

An online scorer (the FastAPI service, later the streaming scorer) needs, for an incoming
transaction at time ``t``, the events that its history features look at: the events of
its two accounts in the plan's window ``[t - window, t)``, the latest event of each
account before ``t`` even when it is older (``time``'s seconds since the previous event),
and, for the graph step's 2-hop paths ``a -> x -> b``, the payments received by the
accounts ``x`` that paid the two accounts recently (the *1-hop expansion*).

So the store keeps, per account, two time-ordered sets of event rows: the payments it
**sent** and the payments it **received**. After every append a set is trimmed to the
events within ``window`` of its newest event, always keeping every event at its two most
recent distinct instants (when the newest instant is the query's own instant, the
previous one is the one ``time`` needs). An event id is appended at most once (replays do
not change state), and the decision taken for it can be stored next to it, so a replayed
request returns the logged decision.

A row is a tuple ``(event_id, t_us, src_account, dst_account, amount, *extra)``: the
columns history steps read, ``t_us`` being microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aml_pipeline.features.windows import since, tail_instants

#: Positions in a row.
ID, T, SRC, DST, AMOUNT = 0, 1, 2, 3, 4
CORE_COLUMNS = ("event_id", "event_time", "src_account", "dst_account", "amount")
FORMAT_VERSION = 1

Row = Sequence[Any]


@dataclass(frozen=True)
class StoreLayout:
    """What a store keeps: the window (µs) sets are trimmed to, and the row's extra columns.

    ``retention_us`` bounds the store (0 = never): an account whose latest event is older
    than the newest event time the store has seen minus the retention is forgotten whole,
    and so is an event id whose event is that old. ``open_store`` checks that it is longer
    than the window plus the allowed lateness, so a forgotten row lies outside every window
    of every event still accepted (docs/reliability.md, "Bounded state").
    """

    window_us: int
    extra_columns: tuple[str, ...] = ()
    retention_us: int = 0

    @property
    def columns(self) -> tuple[str, ...]:
        return (*CORE_COLUMNS, *self.extra_columns)

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, "window_us": self.window_us,
                           "columns": list(self.columns)}, sort_keys=True)


@dataclass
class Reading:
    """What one read returns for the query accounts (all rows strictly before ``end``).

    ``sent`` / ``received``: account -> its rows in ``[start, end)``, oldest first;
    ``latest``: account -> time of its latest event (either direction) before ``end``, or
    None when the store holds none; ``decision``: the stored decision of the event id.
    """

    decision: dict | None = None
    sent: dict[str, list[Row]] = field(default_factory=dict)
    received: dict[str, list[Row]] = field(default_factory=dict)
    latest: dict[str, int | None] = field(default_factory=dict)


def trim_start(times: Sequence[int], window_us: int) -> int:
    """Index of the first row a set keeps (``times`` ascending, non-empty).

    Rows older than ``newest - window`` go, except those at the two most recent distinct
    instants, which always stay.
    """
    newest = times[-1]
    cutoff = newest - window_us
    first_newest = bisect_left(times, newest)
    if first_newest > 0:
        cutoff = min(cutoff, times[first_newest - 1])
    return bisect_left(times, cutoff)


def latest_of(sent: Sequence[Row], received: Sequence[Row]) -> int | None:
    """Latest time among two time-ordered row lists, or None when both are empty."""
    a = sent[-1][T] if sent else None
    b = received[-1][T] if received else None
    if a is None:
        return b
    return a if b is None or a >= b else b


def payers(received: Iterable[list[Row]], start_us: int, cap: int | None) -> set[str]:
    """The senders of time-ordered received rows at or after ``start``, of each list's latest
    ``cap`` rows only (plus the rest of the earliest kept instant) when ``cap`` is set: the
    accounts a 1-hop expansion reads. The 2-hop steps follow no other inflow, so a merchant
    paid by thousands costs as much to read as anyone."""
    found: set[str] = set()
    for rows in received:
        found.update(r[SRC] for r in (since(rows, start_us, T) if cap is None else tail_instants(rows, start_us, cap, T)))
    return found


class OnlineStore(ABC):
    """Per-account event histories for online feature computation (see module doc)."""

    backend: str = ""

    def __init__(self, layout: StoreLayout):
        self.layout = layout

    @abstractmethod
    def read(self, event_id: str, accounts: Iterable[str], start_us: int, end_us: int) -> Reading:
        """The stored decision of ``event_id`` and the query accounts' rows in ``[start, end)``.

        When a decision is stored the rows may be left out (the caller replays it).
        """

    def read_expanded(self, event_id: str, accounts: Sequence[str], start_us: int, end_us: int,
                      expand_start_us: int | None, hubs: frozenset[str], expand_rows: int | None = None) -> Reading:
        """:meth:`read`, plus the received rows in ``[expand_start, end)`` of every account
        that paid a query account in that span (the 1-hop expansion), hubs and the query
        accounts excepted; with ``expand_rows``, only the payers of each query account's
        latest ``expand_rows`` inflows of the span (whole instants: :func:`payers`).
        Backends may do it in one round trip."""
        reading = self.read(event_id, accounts, start_us, end_us)
        if reading.decision is not None or expand_start_us is None:
            return reading
        neighbours = payers([reading.received[acc] for acc in accounts], expand_start_us, expand_rows)
        neighbours.difference_update(accounts)
        neighbours.difference_update(hubs)
        if neighbours:
            reading.received.update(self.read_received(sorted(neighbours), expand_start_us, end_us))
        return reading

    @abstractmethod
    def read_received(self, accounts: Iterable[str], start_us: int, end_us: int) -> dict[str, list[Row]]:
        """Rows each account received in ``[start, end)`` (the 1-hop expansion)."""

    @abstractmethod
    def commit(self, row: Row, decision: dict | None) -> bool:
        """Append ``row`` to its sender's and receiver's sets (trimmed) and store the decision.

        Returns False, changing no history, when the event id was already appended.
        """

    @abstractmethod
    def warm(self, rows: Iterable[Row]) -> int:
        """Bulk-append rows (time-ordered); returns how many were new."""

    @abstractmethod
    def ping(self) -> None:
        """Raise when the store cannot be reached."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Small description for /health and logs."""

    def preload(self) -> int:
        """Read what a scorer keeps near it before it serves (a store outside the process:
        its cached copies); returns how many accounts. The embedded store has nothing to read."""
        return 0

    def busiest(self, n: int) -> list[tuple[str, int]]:
        """Up to ``n`` accounts this process holds rows of, most rows first, each with its
        newest event time (µs): what :meth:`OnlineFeatures.prime` runs the steps for. A store
        that cannot list them cheaply lists none."""
        return []

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    # -- bulk access for micro-batch scorers (the streaming scorer) -------------------------
    def history_rows(self, accounts: Iterable[str], end_us: int, expand_start_us: int | None,
                     hubs: frozenset[str]) -> list[Row]:
        """Every row a micro-batch of events at or after ``end_us`` may need, deduplicated.

        All rows the query accounts' sets hold strictly before ``end_us`` (sets are trimmed
        to the window, and keep each account's latest events, so this covers every bounded
        window and ``time``'s previous event), plus the 1-hop expansion: the received rows in
        ``[expand_start, end)`` of every account that paid a query account in that span,
        hubs and the query accounts excepted. Extra rows are harmless: they are real past
        events, and every feature only looks at rows inside its own windows.
        """
        raise NotImplementedError(f"{type(self).__name__} has no bulk read")

    def known_ids(self, event_ids: Iterable[str]) -> set[str]:
        """The event ids among ``event_ids`` that were appended already (within the dedup TTL)."""
        raise NotImplementedError(f"{type(self).__name__} has no bulk id check")

    def append_batch(self, rows: Sequence[Row], stream: str, batch_id: int) -> int:
        """Bulk-append time-ordered rows (idempotent by event id, like :meth:`warm`) and then
        record ``batch_id`` as the last batch of ``stream`` applied; returns how many were new."""
        n = self.warm(rows)
        self.set_last_batch(stream, batch_id)
        return n

    def last_batch(self, stream: str) -> int | None:
        """The last batch id recorded by :meth:`append_batch` for ``stream`` (None: none yet)."""
        raise NotImplementedError(f"{type(self).__name__} does not record batch ids")

    def set_last_batch(self, stream: str, batch_id: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not record batch ids")
