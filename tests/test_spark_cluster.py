"""The experiment on a real Spark standalone cluster (a master and one worker on 127.0.0.1).

The master and the worker are the installed pyspark's own
(``pyspark/bin/spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``);
the experiment runs as a user runs it, ``python -m aml_pipeline ... engine=spark
engine.master=spark://127.0.0.1:<port>``, so validation, features and scoring happen in
the worker's executor (its own JVM and Python workers), not in the driver. The same
experiment on ``local[2]`` must register a bundle that scores the test window identically,
and ``task=score engine=spark`` on the cluster (the bundle shipped to the executor) must
reproduce the evaluation's test scores. Master and worker are stopped in teardown whatever
happens; their logs are under the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17"),
]

SMALL = ["source.n_accounts=300", "source.days=20", "source.laundering_rate=0.02", "seed=11",
         "model=lightgbm", "model.params.n_estimators=80", "engine=spark", "engine.shuffle_partitions=2",
         "engine.driver_memory=1g", "engine.executor_memory=600m"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def _env() -> dict[str, str]:
    import pyspark

    return {**os.environ, "SPARK_HOME": str(Path(pyspark.__file__).parent), "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[1:3]} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"no {text!r} in {log} after {timeout}s: {log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop one daemon we started (its own process group: spark-class execs the JVM)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """spark://127.0.0.1:<port> with one worker (1 core, 1 GB); logs in <tmp>/logs."""
    root = tmp_path_factory.mktemp("cluster")
    logs = root / "logs"
    logs.mkdir()
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
        log = logs / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(_spark_class()), *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=_env(), cwd=root, start_new_session=True)
        procs.append(proc)
        return proc, log

    try:
        master, master_log = start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                              "--port", str(port), "--webui-port", str(ui)])
        _wait_for(master_log, "I have been elected leader", master)
        worker, worker_log = start("worker", ["org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                                              "--cores", "1", "--memory", "1g", "--webui-port", str(worker_ui),
                                              "--work-dir", str(root / "work")])
        _wait_for(worker_log, "Successfully registered with master", worker)
        yield {"url": url, "root": root, "logs": logs}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _start(args: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen, Path]:
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aml_pipeline", *args], cwd=cwd, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    return proc, log


def _wait(started: tuple[subprocess.Popen, Path]) -> None:
    proc, log = started
    try:
        proc.wait(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]


def _experiment(master: str, folder: Path, logs: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """Start one experiment run (data -> features -> train -> evaluate -> register) in ``folder``."""
    return _start([*SMALL, f'engine.master="{master}"', "+engine.conf.spark.driver.host=127.0.0.1",
                   "+engine.conf.spark.ui.enabled=false"], folder, logs / f"{name}.log")


def _bundle(folder: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from aml_pipeline.registry import resolve_bundle
    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"mlflow.tracking_uri=sqlite:///{folder}/mlruns/mlflow.db",
                                                       f"mlflow.artifact_location={folder}/mlruns/artifacts"])
    GlobalHydra.instance().clear()
    return resolve_bundle("models:/aml-scorer@challenger", cfg)


def test_standalone_cluster_run_registers_the_local_runs_model(cluster):
    logs = cluster["logs"]
    remote, local = cluster["root"] / "remote", cluster["root"] / "local"
    # the two runs side by side (separate folders, MLflow stores and Spark applications): half the wall time
    runs = [_experiment(cluster["url"], remote, logs, "experiment_cluster"),
            _experiment("local[2]", local, logs, "experiment_local")]
    for started in runs:
        _wait(started)
    # the driver really used the cluster: the master logged our application, the worker ran its executor
    assert "Registered app aml_pipeline" in (logs / "master.log").read_text()
    assert "Launching executor" in (logs / "worker.log").read_text() or "Asked to launch executor" in (logs / "worker.log").read_text()
    for layer in ("validated/transactions.parquet", "features/features.parquet"):
        assert pl.read_parquet(remote / "data" / layer).equals(pl.read_parquet(local / "data" / layer)), layer
    b_remote, b_local = _bundle(remote), _bundle(local)
    assert b_remote.registry["version"] == 1 and b_remote.model.name == "lightgbm"
    test = pl.read_parquet(remote / "data/features/features.parquet").filter(pl.col("split") == "test")
    s_remote, s_local = b_remote.predict_features(test), b_local.predict_features(test)
    assert test.height > 0 and np.array_equal(s_remote, s_local)
    assert json.loads((remote / "models/bundle/thresholds.json").read_text()) == \
        json.loads((local / "models/bundle/thresholds.json").read_text())
    evaluated = pl.read_parquet(remote / "data/scores/test.parquet").select("event_id", "score")
    assert np.array_equal(evaluated["score"].to_numpy(), s_remote)

    # task=score on the cluster: features and scores computed in the executor
    _wait(_start([*SMALL, f'engine.master="{cluster["url"]}"', "+engine.conf.spark.driver.host=127.0.0.1",
                  "task=score", "bundle=models:/aml-scorer@challenger", "input=data/validated/transactions.parquet",
                  "output=data/scores/cluster.parquet"], remote, logs / "score_cluster.log"))
    scored = pl.read_parquet(remote / "data/scores/cluster.parquet")
    joined = evaluated.join(scored.select("event_id", pl.col("score").alias("cluster_score"), "model_version"), on="event_id")
    assert joined.height == test.height
    assert (joined["score"] == joined["cluster_score"]).all()
    assert joined["model_version"].unique().to_list() == ["1"]
