"""The transactions behind a case: the account's own over the feature windows, and the
money flow around it up to two hops.

The case database keeps alerts, not every transaction, so the workbench reads the validated
transactions the alerts were scored from (``workbench.transactions``, the canonical
parquet of ``task=data``) once at start-up and indexes them by account: a case page then
costs two dictionary look-ups and a few numpy slices, whatever the size of the database.
Without that file (alerts from the online service's decision log, say), or when it holds
none of the account's transfers, the evidence is the case's own alerted transfers, and the
page says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import polars as pl

from aml_pipeline.errors import UserError
from aml_pipeline.timeutil import as_utc

COLUMNS = ("event_id", "event_time", "src_account", "dst_account", "amount", "currency", "channel")


@dataclass(frozen=True)
class Transfer:
    event_id: str
    event_time: datetime
    src_account: str
    dst_account: str
    amount: float
    currency: Optional[str]
    channel: Optional[str]


class Transactions:
    """Transfers indexed by sending and receiving account, each account's rows in time order."""

    def __init__(self, frame: pl.DataFrame, source: str) -> None:
        missing = [c for c in COLUMNS[:5] if c not in frame.columns]
        if missing:
            raise UserError(f"workbench.transactions={source}: no column {missing[0]!r} (needs {', '.join(COLUMNS[:5])})")
        frame = frame.select([pl.col(c) if c in frame.columns else pl.lit(None, pl.String).alias(c) for c in COLUMNS])
        t = pl.col("event_time")
        utc = t.dt.replace_time_zone("UTC") if frame.schema["event_time"].time_zone is None else t.dt.convert_time_zone("UTC")
        frame = frame.with_columns(utc)
        self.frame = frame.sort("event_time", "event_id")
        self.source = source
        self._times = self.frame["event_time"].dt.epoch("us").to_numpy()
        self._amounts = self.frame["amount"].cast(pl.Float64).to_numpy()
        self._src = self.frame["src_account"].cast(pl.String).to_list()
        self._dst = self.frame["dst_account"].cast(pl.String).to_list()
        self._by: dict[str, np.ndarray] = {}
        rows = self.frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"), "src_account", "dst_account")
        for side in ("src_account", "dst_account"):
            for account, idx in rows.group_by(side).agg("row").iter_rows():
                prev = self._by.get(account)
                self._by[account] = idx if prev is None else np.union1d(prev, idx)  # sorted: time order
        for account, idx in list(self._by.items()):
            self._by[account] = np.asarray(idx, dtype=np.int64)

    @classmethod
    def load(cls, path: str | Path) -> "Transactions":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"workbench.transactions={p}: no such file (the validated parquet of task=data)")
        return cls(pl.read_parquet(p), str(p))

    def knows(self, account: str) -> bool:
        """Whether any transfer sent or received by ``account`` is in the file."""
        return str(account) in self._by

    @property
    def height(self) -> int:
        return self.frame.height

    def _rows(self, account: str, start: datetime, end: datetime) -> np.ndarray:
        idx = self._by.get(str(account))
        if idx is None:
            return np.empty(0, dtype=np.int64)
        t = self._times[idx]
        lo = np.searchsorted(t, int(as_utc(start).timestamp() * 1_000_000), "left")
        hi = np.searchsorted(t, int(as_utc(end).timestamp() * 1_000_000), "right")
        return idx[lo:hi]

    def _transfers(self, rows: Iterable[int]) -> list[Transfer]:
        rows = list(rows)
        if not rows:
            return []
        part = self.frame[rows]
        return [Transfer(r[0], as_utc(r[1]), str(r[2]), str(r[3]), float(r[4]), r[5], r[6]) for r in part.iter_rows()]

    def account(self, account: str, start: datetime, end: datetime, limit: int = 500) -> tuple[list[Transfer], int]:
        """The account's transfers (sent and received) from ``start`` to ``end``, newest
        ``limit`` of them in time order, and how many there were in all."""
        rows = self._rows(account, start, end)
        return self._transfers(rows[-limit:]), int(rows.size)

    def flow(self, account: str, start: datetime, end: datetime, hops: int = 2,
             max_edges: int = 200) -> tuple[list[dict], list[dict]]:
        """Nodes ``{id, hop}`` and edges ``{src, dst, amount, event_time, event_id}`` around
        ``account``: its own transfers first, then each further hop's, largest first, until
        ``max_edges``."""
        hop = {str(account): 0}
        chosen: list[int] = []
        seen: set[int] = set()
        frontier = [str(account)]
        for h in range(1, max(1, hops) + 1):
            rows = [r for a in frontier for r in self._rows(a, start, end).tolist() if r not in seen]
            rows = sorted(set(rows), key=lambda r: -self._amounts[r])[: max(0, max_edges - len(chosen))]
            nxt = []
            for r in rows:
                seen.add(r)
                chosen.append(r)
                for other in (self._src[r], self._dst[r]):
                    if other not in hop:
                        hop[other] = h
                        nxt.append(other)
            frontier = nxt
            if len(chosen) >= max_edges:
                break
        edges = [{"src": t.src_account, "dst": t.dst_account, "amount": t.amount, "event_time": t.event_time,
                  "event_id": t.event_id} for t in self._transfers(sorted(chosen))]
        return [{"id": a, "hop": h} for a, h in hop.items()], edges


def alerted_transfers(alerts) -> list[Transfer]:
    """The case's own alerted transfers, when no transactions file is loaded."""
    out = []
    for a in alerts:
        src = (a.details or {}).get("src_account") or a.subject_account
        dst = (a.details or {}).get("dst_account") or a.counterparty or "?"
        out.append(Transfer(a.event_id, a.event_time, str(src), str(dst), float(a.amount or 0.0), a.currency, a.channel))
    return out


def flow_of(transfers: list[Transfer], account: str) -> tuple[list[dict], list[dict]]:
    """Nodes and edges of a list of transfers (one hop around ``account``)."""
    hop = {account: 0}
    for t in transfers:
        for other in (t.src_account, t.dst_account):
            hop.setdefault(other, 1)
    return ([{"id": a, "hop": h} for a, h in hop.items()],
            [{"src": t.src_account, "dst": t.dst_account, "amount": t.amount, "event_time": t.event_time,
              "event_id": t.event_id} for t in transfers])
