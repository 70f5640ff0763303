"""A scored window, whichever scorer wrote it, as one frame.

Three scorers write decisions, each in its own form; the monitor reads all three:

- ``task=score`` (and ``task=evaluate``'s ``data/scores/test.parquet``): parquet with the
  feature values as columns;
- the online service's decision log (``deploy.decision_log``): JSON lines with the
  feature values under ``features``; its rotated files (``decisions.jsonl.N``) are read
  too, oldest first, and a torn last line is skipped with one warning;
- the streaming scorer's ``decisions`` output (``deploy.write_decisions``): a folder of
  parquet parts, or JSON lines with the features as fields.

A folder is read whole (its parquet or ``*.jsonl`` files). The result has ``event_id``,
``event_time`` (UTC), ``jurisdiction``, ``score``, ``alert`` and the bundle's feature
columns (missing ones as nulls, which the report shows as missing values), and the
shadow bundle's ``shadow_score``, ``shadow_alert`` and version when the log has them
(``deploy.shadow``). An event logged twice (a replay) counts once, its last decision.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from aml_pipeline.errors import UserError
from aml_pipeline.jsonl import complete_bytes, rotated_files
from aml_pipeline.timeutil import config_time

NEEDED = ("event_id", "event_time", "score", "alert")


def _jsonl(files: list[Path]) -> pl.DataFrame:
    frames = []
    for f in files:
        data = complete_bytes(f)  # a torn last line (a write cut short) is skipped, with a warning
        if not data.strip():
            continue
        try:
            frame = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
        except Exception as exc:  # polars' own error names the line
            raise UserError(f"input={f}: not JSON lines ({str(exc).splitlines()[0]})") from None
        if "features" in frame.columns and frame.schema["features"] == pl.Struct:
            frame = frame.drop([c for c in frame.columns if c != "features" and c in frame["features"].struct.fields]) \
                .unnest("features")
        frames.append(frame.drop([c for c in ("event", "top_features") if c in frame.columns]))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _files(p: Path) -> tuple[str, list[Path]]:
    if p.is_dir():
        parquet = sorted(p.rglob("*.parquet"))
        jsonl = sorted([*p.rglob("*.jsonl"), *p.rglob("*.json")])
        jsonl = [r for f in jsonl for r in (rotated_files(f) if f.suffix == ".jsonl" else [f])]
        if parquet:
            return "parquet", parquet
        if jsonl:
            return "jsonl", jsonl
        raise UserError(f"input={p}: the folder holds no .parquet or .jsonl files")
    if not p.is_file():
        raise UserError(f"input={p}: no such file (task=score output, a decision log or a streaming decisions folder)")
    return ("parquet", [p]) if p.suffix == ".parquet" else ("jsonl", rotated_files(p))


def read_window(path: str | Path, feature_columns: list[str], start: str | None = None,
                end: str | None = None) -> pl.DataFrame:
    """The decisions of ``path`` in [start, end), in event-time order, with the columns above."""
    p = Path(path)
    kind, files = _files(p)
    frame = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if kind == "parquet" else _jsonl(files)
    missing = [c for c in NEEDED if c not in frame.columns]
    if missing:
        raise UserError(f"input={p}: no column {missing[0]!r}; expected scored decisions "
                        f"(task=score output, deploy.decision_log, or the stream's decisions)")
    if frame.schema["event_time"] == pl.String:
        frame = frame.with_columns(pl.col("event_time").str.to_datetime(time_zone="UTC"))
    elif isinstance(frame.schema["event_time"], pl.Datetime) and frame.schema["event_time"].time_zone is None:
        frame = frame.with_columns(pl.col("event_time").dt.replace_time_zone("UTC"))
    frame = frame.with_columns(pl.col("event_time").dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
    if "jurisdiction" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.String).alias("jurisdiction"))
    frame = frame.with_columns(*[pl.lit(None, pl.Float64).alias(c) for c in feature_columns if c not in frame.columns])
    if start:
        frame = frame.filter(pl.col("event_time") >= config_time(start, "monitor.start"))
    if end:
        frame = frame.filter(pl.col("event_time") < config_time(end, "monitor.end"))
    shadow = [pl.col("shadow_score").cast(pl.Float64), pl.col("shadow_alert").cast(pl.Boolean),
              pl.col("shadow_model_version").cast(pl.String)] if "shadow_score" in frame.columns else []
    if shadow and "shadow_model_version" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.String).alias("shadow_model_version"))
    return (frame.select(pl.col("event_id").cast(pl.String), "event_time", pl.col("jurisdiction").cast(pl.String),
                         pl.col("score").cast(pl.Float64), pl.col("alert").cast(pl.Boolean), *feature_columns, *shadow)
            .unique("event_id", keep="last", maintain_order=True).sort("event_time", "event_id"))
