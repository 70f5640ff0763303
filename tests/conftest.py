"""Shared fixtures: paths to the real sample slices and a Hydra composer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from aml_pipeline.config import register_configs
from aml_pipeline.store.local_redis import LocalRedis

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DATA = Path(__file__).resolve().parent / "data"

register_configs()


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> DictConfig, composed from conf/ like the CLI does."""

    def _compose(overrides: list[str] | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=overrides or [])

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m aml_pipeline ARGS`` as a user would, from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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


# ----------------------------------------------------------------------------- Kafka broker
@pytest.fixture(scope="session")
def kafka_broker():
    """Bootstrap string of a local Kafka-protocol broker (noida-db, from the test extra), for the
    whole session; tests create their own topics (auto-create on produce also works)."""
    from aml_pipeline.streaming.broker import LocalBroker

    with LocalBroker() as broker:
        yield broker.bootstrap
