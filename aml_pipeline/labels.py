"""Labels files: when an event's label became known, and applying them to a source.

A labels file (csv or parquet) has one row per label given: ``event_id``, ``label`` (0/1)
and ``labelled_at`` (UTC), optionally ``account`` and ``source`` (who gave it: the
workbench's export writes ``workbench:<decision>``). An event may have several rows (an
escalation, then a decision): the latest known at a given instant is the one that counts.

- ``task=monitor`` (``monitor.labels=``) judges precision over time with them;
- training takes them as the source of truth (``source.labels=``): for each event the
  latest label known by ``source.labels_as_of`` (default: now) replaces the source's own
  label, or adds one where the source has none; labels given after that instant are left
  out, as they were not known when the model is (or was) trained.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from aml_pipeline.errors import UserError

COLUMNS = ("event_id", "label", "labelled_at")
#: What ``task=labels`` writes, in this order.
EXPORT_COLUMNS = ("event_id", "account", "label", "labelled_at", "source")


def read_labels(path: str | Path, key: str = "monitor.labels") -> pl.DataFrame:
    """A labels file (csv or parquet) with event_id, label (0/1) and labelled_at (UTC)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{key}={p}: no such file (csv or parquet with {', '.join(COLUMNS)})")
    frame = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p, infer_schema_length=10_000)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{key}={p}: no column {missing[0]!r}; needs {', '.join(COLUMNS)}")
    at = pl.col("labelled_at")
    if frame.schema["labelled_at"] == pl.String:
        at = at.str.to_datetime(time_zone="UTC", strict=False)
    elif isinstance(frame.schema["labelled_at"], pl.Datetime) and frame.schema["labelled_at"].time_zone is None:
        at = at.dt.replace_time_zone("UTC")
    out = frame.select(pl.col("event_id").cast(pl.String), pl.col("label").cast(pl.Int8, strict=False),
                       at.dt.convert_time_zone("UTC").dt.cast_time_unit("us").alias("labelled_at"))
    bad = out.filter(pl.col("label").is_null() | ~pl.col("label").is_in([0, 1]) | pl.col("labelled_at").is_null())
    if bad.height:
        raise UserError(f"{key}={p}: {bad.height} rows have a label other than 0/1 or an unreadable "
                        f"labelled_at (first: event_id {bad['event_id'][0]!r})")
    return out


def known_by(labels: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """Per event, the latest label given at or before ``as_of``."""
    return (labels.filter(pl.col("labelled_at") <= as_of).sort("labelled_at", maintain_order=True)
            .unique("event_id", keep="last", maintain_order=True).select("event_id", "label", "labelled_at"))


def apply_labels(events: pl.DataFrame, labels: pl.DataFrame, as_of: datetime) -> tuple[pl.DataFrame, dict]:
    """``events`` with each event's latest label known by ``as_of`` in place of its own.

    A negative label clears the event's typology and instance id (they describe positives
    only). Returns the frame (same rows, same order, same columns) and counts: labels
    read, known by as_of, given later (left out), matched events, labels changed, labels
    added where the source had none, and labels naming events not in the data.
    """
    known = known_by(labels, as_of)
    later = labels.filter(pl.col("labelled_at") > as_of)["event_id"].n_unique()
    joined = events.join(known.select("event_id", pl.col("label").alias("_given")), on="event_id", how="left",
                         maintain_order="left")
    given = pl.col("_given")
    matched = int(joined["_given"].is_not_null().sum())
    changed = int(joined.filter(given.is_not_null() & pl.col("label").is_not_null() & (given != pl.col("label"))).height)
    added = int(joined.filter(given.is_not_null() & pl.col("label").is_null()).height)
    dtype = events.schema["label"]
    negative = given.is_not_null() & (given == 0)
    cleared = [pl.when(negative).then(None).otherwise(pl.col(c)).alias(c) for c in ("typology", "instance_id")
               if c in events.columns]
    out = joined.with_columns(pl.coalesce(given, pl.col("label")).cast(dtype).alias("label"), *cleared).drop("_given")
    stats = {"labels_read": labels.height, "as_of": as_of.isoformat(), "known": known.height,
             "given_later": int(later), "events_matched": matched, "changed": changed, "added": added,
             "not_in_data": known.height - matched}
    return out.select(events.columns), stats
