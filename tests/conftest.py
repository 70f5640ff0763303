"""Shared fixtures: paths to the real sample slices and a Hydra composer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from aml_pipeline import CONF_DIR
from aml_pipeline.config import register_configs
from aml_pipeline.testing.local_redis import LocalRedis

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
DATA = Path(__file__).resolve().parent / "data"

#: The longest test files, longest first (seconds of one worker, measured on a clean run:
#: 290, 260, 170, 160, 130, 100, 95, 90, 75, 65, 65, 50, 50, 50, 50, 45), collected in this
#: order: the two workers (``-n 2 --dist loadfile --no-loadscope-reorder``; xdist would
#: otherwise reorder files by their number of tests) take them first and share out the many
#: short files after, instead of one worker ending alone on a long one.
LONGEST_FIRST = ("test_stream_spark_state.py", "test_stream_kafka.py", "test_dvc.py", "test_stream.py",
                 "test_spark_cluster.py", "test_kafka_connector.py", "test_spark_parity.py", "test_service.py",
                 "test_pipeline.py", "test_monitor.py", "test_promote.py", "test_spark_models.py",
                 "test_allowlist.py", "test_bounded_state.py", "test_bounded_state_spark.py", "test_secret_leaks.py")


#: JIT settings for the short-lived Spark drivers of the tests (in process and in every
#: ``run_cli`` subprocess, which inherits the environment): the client JIT only and the serial
#: collector start a driver faster and run these small jobs no slower (two streaming tests
#: measured 111-112 s without, 98-107 s with). ``SPARK_SUBMIT_OPTS`` is read by Spark's
#: launcher alone, so the session's own ``spark.driver.extraJavaOptions`` stay as they are.
TEST_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


#: Spark's own Kafka connector (spark-sql-kafka-0-10) for the in-process Spark sessions of the
#: tests: its jars (resolved with mvn on first use, cached under .cache/jars/) go on the JVM's
#: classpath when pyspark launches it (PYSPARK_SUBMIT_ARGS, read once per process, whichever
#: test module starts Spark first), so format("kafka") and our format("aml_kafka") run in the
#: same session. If they cannot be had, the tests that need them fail saying why
#: (spark_kafka_jars_or_fail). Subprocesses (run_cli) do not inherit it:
#: the scorer adds the jars itself.
def pytest_configure(config):
    from aml_pipeline.streaming.jars import JarsUnavailable, spark_kafka_jars

    os.environ.setdefault("SPARK_SUBMIT_OPTS", TEST_JVM_OPTS)

    try:
        jars, _ = spark_kafka_jars()
    except JarsUnavailable:
        return
    os.environ["PYSPARK_SUBMIT_ARGS"] = f"--jars {','.join(str(j) for j in jars)} pyspark-shell"


def spark_kafka_jars_or_fail() -> list[str]:
    """The connector's jars (cached by then), or the test fails saying why they are missing."""
    from aml_pipeline.streaming.jars import JarsUnavailable, spark_kafka_jars

    try:
        return [str(j) for j in spark_kafka_jars()[0]]
    except JarsUnavailable as exc:
        pytest.fail(f"Spark's Kafka connector is not available: {exc}")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


register_configs()


@pytest.fixture
def data_dir() -> Path:
    return DATA


def compose_config(overrides: list[str] | None = None):
    """A DictConfig composed from conf/ like the CLI does (Hydra's global state left clear)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=overrides or [])
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> DictConfig, composed from conf/ like the CLI does."""
    yield compose_config
    GlobalHydra.instance().clear()


#: A quickstart small enough for a test: ~400 accounts over 3 weeks, 80 trees.
SMALL_RUN = ["+experiment=quickstart", "source.n_accounts=400", "source.days=21", "source.laundering_rate=0.03",
             "model.params.n_estimators=80"]


def train_small_run(root: Path):
    """data -> features -> train of :data:`SMALL_RUN` in-process (no MLflow), under ``root``.

    Returns the path overrides used and the test window's start, as text and as a UTC datetime."""
    import json

    import polars as pl

    from aml_pipeline.tasks import run_task

    paths = [f"paths.data_dir={root / 'data'}", f"paths.models_dir={root / 'models'}", f"paths.reports_dir={root / 'reports'}"]
    for task in ("data", "features", "train"):
        run_task(compose_config([*SMALL_RUN, *paths, f"task={task}"]))
    split = json.loads((root / "data/features/split.json").read_text())
    return paths, split["test_start"], pl.Series([split["test_start"]]).str.to_datetime(time_zone="UTC")[0]


def start_local_spark(tmp_path_factory, **conf):
    """A local[2] SparkSession for tests (2 shuffle partitions, no UI); ``conf`` adds Spark conf."""
    from aml_pipeline.spark.session import get_session

    return get_session({"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "1g",
                        "conf": {"spark.ui.enabled": False, **conf}}, str(tmp_path_factory.mktemp("spark")))


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    session = start_local_spark(tmp_path_factory)
    yield session
    session.stop()


def cli_env() -> dict[str, str]:
    """The environment of a ``python -m aml_pipeline`` subprocess: the test process's, without
    the Spark submit arguments set for in-process sessions (a scorer chooses its own jars)."""
    return {k: v for k, v in os.environ.items() if k != "PYSPARK_SUBMIT_ARGS"}


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m aml_pipeline ARGS`` as a user would, from ``cwd``."""
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "aml_pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if not LocalRedis.available():
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (.ci/run installs it with apt-get)")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = LocalRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway local PostgreSQL server (Debian's), one per module; ``new_database()`` per test."""
    from aml_pipeline.testing.local_postgres import LocalPostgres

    if not LocalPostgres.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    server = LocalPostgres().start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- Kafka broker
@pytest.fixture(scope="session")
def kafka_broker():
    """Bootstrap string of a local Apache Kafka broker (KRaft, from its Maven Central jars,
    resolved with mvn on first use), for the whole session (each xdist worker has its own);
    tests create their own topics, with fresh names (auto-create on produce also works)."""
    from aml_pipeline.testing.broker import KafkaBroker

    with KafkaBroker() as broker:
        print(f"\nApache Kafka on {broker.bootstrap}, up in {broker.start_seconds:.1f}s", file=sys.stderr)
        yield broker.bootstrap
