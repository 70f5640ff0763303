"""Parquet in and out of Spark, in the layouts the rest of the pipeline reads.

Spark writes a *dataset* (a folder of part files, plus checksums); the polars stages that
follow (train, evaluate, score) read one parquet *file* per layer. :func:`publish` bridges
the two without collecting anything into Spark's driver: Spark writes the (sorted) rows to
a staging folder next to the target, in row groups of at most 16 MB and 65,536 rows, then the part files
are streamed, in part order, row group by row group, into the single target file, which
replaces the old one atomically (the driver holds one row group at a time).
Paths may be local or any URI pyarrow's filesystems understand (``s3://``, ``hdfs://``).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

STAGING = "_spark"
#: Parquet row-group size of Spark's part files (and so of the published file), in bytes.
ROW_GROUP_BYTES = 16 * 1024 * 1024
#: ... and in rows (whichever comes first).
ROW_GROUP_ROWS = 65_536
#: Seconds of the last :func:`publish`: Spark's sort and write (which computes the whole lazy
#: plan, e.g. every feature pass) and the copy into one file (read by bench/spark.py).
LAST_PUBLISH: dict[str, float] = {}


def _fs(path: str | Path) -> tuple[pafs.FileSystem, str]:
    text = str(path)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).resolve())


def staging_dir(target: str | Path, what: str) -> str:
    """A fresh folder beside ``target`` for Spark's part files (``<dir>/_spark/<what>-<id>``)."""
    text = str(target)
    parent = text.rsplit("/", 1)[0] if "/" in text else "."
    return f"{parent}/{STAGING}/{what}-{uuid.uuid4().hex[:8]}"


def part_files(folder: str) -> list[str]:
    """The parquet part files of a Spark output folder, in partition order."""
    fs, root = _fs(folder)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    parts = sorted(i.path for i in infos if i.is_file and i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    return parts


def remove(path: str | Path) -> None:
    fs, root = _fs(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(root)
    elif info.type == pafs.FileType.File:
        fs.delete_file(root)


def publish(frame, target: str | Path, sort_by: list[str] | None = None, drop: list[str] | None = None,
            what: str = "dataset") -> int:
    """Write a Spark DataFrame to the single parquet file ``target``; returns the row count.

    ``sort_by`` orders the rows globally (Spark range-partitions and sorts; part files
    then follow each other in that order); ``drop`` removes (ordering) columns after the
    sort. Without ``sort_by``, row order is Spark's.
    """
    folder = staging_dir(target, what)
    # A global sort samples its input to choose the range boundaries, which runs the stage
    # before it twice: for a feature table that stage is the last feature pass (a window
    # over millions of stacked rows). A hash shuffle first makes that stage run once; the
    # sample and the sort then read its cheap shuffle output.
    out = frame.repartition(*sort_by).orderBy(*sort_by) if sort_by else frame
    if drop:
        out = out.drop(*drop)
        frame = frame.drop(*drop)
    # Small row groups: the copy below holds one row group at a time in this process, so
    # its memory stays flat however many rows a part file holds.
    start = time.perf_counter()
    out.write.mode("overwrite").option("parquet.block.size", ROW_GROUP_BYTES) \
        .option("parquet.block.row.count.limit", ROW_GROUP_ROWS).parquet(folder)
    written = time.perf_counter()
    try:
        rows = join_files(part_files(folder), target, lambda: arrow_schema(frame))
    finally:
        remove(folder)
        remove_if_empty(folder.rsplit("/", 1)[0])
    LAST_PUBLISH.clear()
    LAST_PUBLISH.update(spark_write=written - start, copy=time.perf_counter() - written)
    return rows


def join_files(parts: list[str], target: str | Path, empty_schema) -> int:
    """Copy parquet files, in order, row group by row group, into the single file ``target``
    (replaced atomically); returns the row count. This process holds one row group at a
    time, so its memory does not grow with the rows. ``empty_schema()`` gives the Arrow
    schema to write when there are no files."""
    fs, dest = _fs(target)
    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
    tmp = f"{dest}.{uuid.uuid4().hex[:8]}.tmp"
    rows = 0
    writer = None
    try:
        for part in parts:
            pf = pq.ParquetFile(fs.open_input_file(part))
            if writer is None:
                writer = pq.ParquetWriter(fs.open_output_stream(tmp), pf.schema_arrow, compression="zstd")
            for i in range(pf.num_row_groups):
                table = pf.read_row_group(i)
                rows += table.num_rows
                writer.write_table(table)
        if writer is None:  # no files: an empty result
            writer = pq.ParquetWriter(fs.open_output_stream(tmp), empty_schema(), compression="zstd")
        writer.close()
        writer = None
        remove(dest)
        fs.move(tmp, dest)
    finally:
        if writer is not None:
            writer.close()
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
    return rows


def arrow_schema(frame):
    """The Arrow schema of a Spark DataFrame (timestamps in UTC, the session's zone)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(frame.schema, timezone="UTC")


def publish_files(files: list[str], target: str | Path, frame=None) -> int:
    """Join parquet files that are already in order (the account partitions' time buckets)
    into the single parquet file ``target``; returns the row count. ``frame``: the Spark
    DataFrame whose schema an empty result is written with."""
    start = time.perf_counter()
    rows = join_files(files, target, lambda: arrow_schema(frame))
    LAST_PUBLISH.clear()
    LAST_PUBLISH.update(spark_write=0.0, copy=time.perf_counter() - start)
    return rows


def remove_if_empty(folder: str) -> None:
    fs, root = _fs(folder)
    try:
        if fs.get_file_info(root).type == pafs.FileType.Directory and not fs.get_file_info(pafs.FileSelector(root)):
            fs.delete_dir(root)
    except OSError:
        pass


def stage_polars(frame, target: str | Path) -> str:
    """Write a polars frame where Spark can read it (the adapters' staged output)."""
    fs, dest = _fs(target)
    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(dest) as f:
        frame.write_parquet(f)
    return str(target)
