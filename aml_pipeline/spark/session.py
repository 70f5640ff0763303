"""Build the SparkSession from ``cfg.engine``: the one place Spark is configured.

Settings the engine's correctness depends on are fixed here and win over ``engine.conf``:
the session time zone is UTC (canonical event times are UTC), timestamps are written to
parquet as microseconds (what polars reads back as ``Datetime(us, UTC)``), and Arrow is on
for the transfers between Python and the JVM. Logs are quiet (errors only).
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from aml_pipeline.optional import require

#: Conf the engine needs; applied after ``engine.conf`` so a user value cannot break parity.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}

#: Defaults that ``engine.conf`` may override.
DEFAULT_CONF: dict[str, str] = {
    "spark.ui.showConsoleProgress": "false",
    # Window partitions (one account's events) stay in memory up to this many rows
    # before spilling; the default (4096) spills a busy merchant's partition to disk.
    "spark.sql.windowExec.buffer.in.memory.threshold": "262144",
    # Spark's own success markers and checksums would sit beside the parquet part files.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    # Reliable checkpoints (cluster masters) are deleted once nothing refers to them.
    "spark.cleaner.referenceTracking.cleanCheckpoints": "true",
}

LOG4J = Path(__file__).with_name("log4j2.properties")


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def flatten_conf(conf: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{spark: {executor: {instances: 4}}}`` (a dotted override on the command line) →
    ``{"spark.executor.instances": 4}``; keys that already hold dots are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in conf.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_conf(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def spark_conf(engine: Mapping[str, Any] | DictConfig) -> dict[str, str]:
    """Every conf key the session is built with, from an ``EngineConfig`` (for docs and tests)."""
    conf = dict(DEFAULT_CONF)
    conf["spark.app.name"] = str(engine.get("app_name", "aml_pipeline"))
    conf["spark.master"] = str(engine.get("master", "local[*]"))
    conf["spark.driver.memory"] = str(engine.get("driver_memory", "2g"))
    conf["spark.executor.memory"] = str(engine.get("executor_memory", "2g"))
    conf["spark.sql.shuffle.partitions"] = str(engine.get("shuffle_partitions", 8))
    java_opts = f"-Dlog4j2.configurationFile=file:{LOG4J}"
    conf["spark.driver.extraJavaOptions"] = java_opts
    conf["spark.executor.extraJavaOptions"] = java_opts
    for key, value in flatten_conf(_plain(engine.get("conf")) or {}).items():
        if key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
            value = f"{java_opts} {value}"
        conf[str(key)] = _text(value)
    conf.update(REQUIRED_CONF)
    return conf


def _session_class():
    """pyspark's ``SparkSession``, imported here only: :mod:`.mllib` imports this module, and
    a bundle holding an MLlib model loads without pyspark (it needs the extra when it scores)."""
    sql = require("pyspark.sql", why="a Spark session (engine=spark, model=spark_*, task=stream)", extra="spark")
    return sql.SparkSession


def get_session(engine: Mapping[str, Any] | DictConfig, data_dir: str | None = None):
    """The SparkSession for ``engine`` (created once per process, reused after).

    ``checkpoint_dir`` is set on the context when given, and on a cluster master defaults
    to ``<data_dir>/_spark/checkpoints`` (local masters use local checkpoints, which need
    no directory). Memory settings take effect only when this call starts the JVM.
    """
    # Hydra sets Python logging to INFO; py4j would report every connection it closes.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    builder = _session_class().builder
    for key, value in spark_conf(engine).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # getOrCreate returns an existing session as is; re-assert what correctness needs.
    for key, value in REQUIRED_CONF.items():
        spark.conf.set(key, value)
    spark.conf.set("spark.sql.shuffle.partitions", str(engine.get("shuffle_partitions", 8)))
    spark.sparkContext.setLogLevel("ERROR")
    local = spark.sparkContext.master.startswith("local")
    checkpoint = engine.get("checkpoint_dir") or (str(Path(data_dir) / "_spark" / "checkpoints") if data_dir and not local else None)
    if checkpoint:
        spark.sparkContext.setCheckpointDir(checkpoint)
    if not getattr(get_session, "_registered", False):
        atexit.register(stop_session)
        get_session._registered = True  # type: ignore[attr-defined]
    return spark


def stop_session() -> None:
    """Stop the active session, if any (at exit, or between tests that need a fresh JVM)."""
    spark = _session_class().getActiveSession()
    if spark is not None:
        spark.stop()

