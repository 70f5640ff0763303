"""Where alerts come from for ``task=cases``: a scored parquet file, JSON-lines files (the
streaming scorer's ``alerts/`` and ``deferred/`` parts, the online service's decision log),
or a folder of them, which ``cases.follow`` keeps watching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import polars as pl

from aml_pipeline.errors import UserError

#: The event columns an alert needs for its case and its evidence.
EVENT_COLUMNS = ("src_account", "dst_account", "amount", "currency", "channel", "merchant", "region", "src_bank",
                 "dst_bank", "src_country", "dst_country")
#: Subfolders of a stream's output folder that hold alerts (deferred: over the alert budget,
#: still alerts: regulators forbid suppressing them).
ALERT_KINDS = ("alerts", "deferred")


def jsonl_rows(path: Path) -> list[dict]:
    """Alert records of a JSON-lines file; a decision log's ``event`` is flattened in."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n}: not a JSON line") from None
            row = alert_row(r)
            if row is not None:
                rows.append(row)
    return rows


def alert_row(r: object) -> dict | None:
    """One alert record (a file line, a Kafka message) as ingest_alerts takes it; None for
    a decision that is no alert. A decision log's ``event`` is flattened in, the stream's
    read position kept as ``position``."""
    if not isinstance(r, dict) or not r.get("alert", True):
        return None
    event = r.pop("event", None)
    r.pop("features", None)
    if isinstance(event, dict):
        r = {**{k: event.get(k) for k in EVENT_COLUMNS if k in event}, **r}
    if isinstance(r.get("source"), dict):  # the stream's read position
        r["position"] = r.pop("source")
    return r


def alert_files(folder: Path) -> list[Path]:
    """The JSON-lines files of a folder: its own, or those of its alerts/ and deferred/."""
    kinds = [folder / k for k in ALERT_KINDS if (folder / k).is_dir()]
    where = kinds or [folder]
    return sorted(p for d in where for p in d.glob("*.jsonl") if p.is_file())


def read_parquet_alerts(path: Path, events: Optional[str], subject: str) -> pl.DataFrame:
    """A scored parquet file's alerts, joined with the canonical events for their accounts
    and amounts when it lacks them (``task=evaluate``'s test scores, Spark's)."""
    frame = pl.read_parquet(path)
    if "alert" in frame.columns:
        frame = frame.filter(pl.col("alert").fill_null(False))
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if subject not in frame.columns or "amount" not in frame.columns:
        if not events or not Path(events).is_file():
            raise UserError(f"input={path}: the scores carry no {subject!r}; cases.events must name the canonical "
                            f"events they were scored from (got {events!r})")
        scan = pl.scan_parquet(events)
        names = scan.collect_schema().names()
        take = [c for c in missing if c in names]
        wanted = frame["event_id"].unique().implode()
        ev = (scan.select("event_id", *take).filter(pl.col("event_id").is_in(wanted))  # only the alerts' events
              .unique("event_id", keep="first").collect())
        frame = frame.join(ev, on="event_id", how="left", maintain_order="left")
        lost = frame.filter(pl.col(subject).is_null()).height
        if lost:
            raise UserError(f"input={path}: {lost} alerts have no event in cases.events={events} (first: "
                            f"{frame.filter(pl.col(subject).is_null())['event_id'][0]!r})")
    return frame


def read_files(paths: Iterable[Path]) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        rows += jsonl_rows(p)
    return rows
