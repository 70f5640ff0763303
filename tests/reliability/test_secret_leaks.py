"""No secret leaks: a run with a known API key and a Redis password writes neither anywhere.

The end-to-end test trains, evaluates and registers a small model with ``deploy.api_key`` and
a password in ``deploy.store.redis_url`` on the command line, serves it on a real Redis that
requires the password, scores, asks ``/health`` with and without the key, fails a start on an
unreachable Redis, then reads every byte the runs wrote (stdout/stderr, logs, reports/, the
MLflow store and artifacts, the decision log, the bundle, Hydra's config copies) and finds
neither string.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aml_pipeline.lineage import config_hash
from aml_pipeline.secrets import redact, redact_url, secret_values, without_secrets
from aml_pipeline.testing.local_redis import free_port
from tests.conftest import SMALL_RUN, run_cli

KEY = "key-Hs83Kd02Qp-0123456789"
PW = "pw-Zq7Xr2Lm9vB"


# ----------------------------------------------------------------------------- rules
def test_url_passwords_are_masked_everywhere_in_a_line():
    line = f"cannot reach redis://default:{PW}@10.0.0.1:6379/0 or rediss://:{PW}@h/1 (see http://host:80/a@b)"
    assert redact_url(line) == "cannot reach redis://default:***@10.0.0.1:6379/0 or rediss://:***@h/1 (see http://host:80/a@b)"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_secret_keys_are_masked_and_dropped():
    cfg = {"deploy": {"api_key": KEY, "port": 8000, "store": {"redis_url": f"redis://u:{PW}@h/0"}},
           "replay": {"options": {"sasl.password": PW, "client.id": "x"}}, "hf_token": KEY, "n_tokens": 3, "unset_secret": None}
    assert redact(cfg) == {"deploy": {"api_key": "***", "port": 8000, "store": {"redis_url": "redis://u:***@h/0"}},
                           "replay": {"options": {"sasl.password": "***", "client.id": "x"}}, "hf_token": "***",
                           "n_tokens": 3, "unset_secret": None}
    assert without_secrets(cfg) == {"deploy": {"port": 8000, "store": {"redis_url": "redis://u:***@h/0"}},
                                    "replay": {"options": {"client.id": "x"}}, "n_tokens": 3}
    assert secret_values(cfg) == {KEY, PW}


def test_config_hash_ignores_secrets_only(compose_cfg):
    base = config_hash(compose_cfg([]))
    assert config_hash(compose_cfg([f"deploy.api_key={KEY}"])) == base
    assert config_hash(compose_cfg(["deploy.api_key=another-key-0123456789"])) == base
    assert config_hash(compose_cfg([f"deploy.store.redis_url='redis://default:{PW}@127.0.0.1:6379/0'"])) == \
        config_hash(compose_cfg(["deploy.store.redis_url='redis://default:other@127.0.0.1:6379/0'"]))
    assert config_hash(compose_cfg(["seed=7"])) != base  # a real change still shows


def test_store_errors_mask_the_password():
    pytest.importorskip("redis")
    from aml_pipeline.errors import UserError
    from aml_pipeline.store.base import StoreLayout
    from aml_pipeline.store.redis_store import RedisStore

    url = f"redis://default:{PW}@127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(UserError) as exc:
        RedisStore(StoreLayout(window_us=1), url)
    assert PW not in str(exc.value) and "redis://default:***@127.0.0.1" in str(exc.value)


# ----------------------------------------------------------------------------- /health
class FakeStore:
    backend = "redis"

    def ping(self):
        return None

    def stats(self):
        return {"backend": "redis", "url": f"redis://default:{PW}@127.0.0.1:6379/0", "keys": 3}


def test_health_shows_status_only_without_the_key():
    from fastapi.testclient import TestClient

    from aml_pipeline.serving.app import ServiceState, create_app
    from aml_pipeline.serving.metrics import Metrics

    state = ServiceState(KEY, 65536, Metrics(plain=True))
    app = create_app(state, ["USD"], [], 10)
    with TestClient(app) as c:
        state.set_failed(f"store: cannot reach Redis at redis://default:{PW}@127.0.0.1:1/0")
        r = c.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "failed"}
        assert PW not in c.get("/health", headers={"X-API-Key": KEY}).text
        scorer = SimpleNamespace(store=FakeStore(), bundle=SimpleNamespace(thresholds={"US": 0.5}),
                                 trace={"model_name": "m", "model_version": "1", "bundle_hash": "abc"},
                                 engine=SimpleNamespace(name="online"))
        state.set_ready(scorer)
        for headers in ({}, {"X-API-Key": "wrong-key-0123456789"}):
            r = c.get("/health", headers=headers)
            assert r.status_code == 200 and r.json() == {"status": "ready"}
        r = c.get("/health", headers={"X-API-Key": KEY})
        assert r.status_code == 200 and r.json()["store"]["url"] == "redis://default:***@127.0.0.1:6379/0"
        assert r.json()["model_version"] == "1" and PW not in r.text


# ----------------------------------------------------------------------------- end to end
class PasswordRedis:
    """redis-server on loopback that requires a password (outside the folder the test greps)."""

    def __init__(self, directory: Path):
        self.directory, self.port = directory, free_port()
        self.url = f"redis://default:{PW}@127.0.0.1:{self.port}/0"

    def start(self) -> "PasswordRedis":
        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                                      "--requirepass", PW, "--logfile", str(self.directory / "redis.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server with a password did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _tx(i: int) -> dict:
    return {"event_id": f"leak-{i}", "event_time": f"2026-01-01T00:0{i}:00Z", "src_account": "LEAK-A",
            "dst_account": "LEAK-B", "amount": 120.0 + i, "currency": "USD", "channel": "transfer", "jurisdiction": "US"}


@pytest.mark.slow
def test_no_output_of_a_run_holds_the_key_or_the_password(tmp_path):
    httpx = pytest.importorskip("httpx")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    from aml_pipeline.testing.launcher import ServiceProcess

    root = tmp_path / "run"
    root.mkdir()
    redis = PasswordRedis(tmp_path / "redis").start()
    outputs: list[str] = []
    try:
        paths = [f"paths.data_dir={root / 'data'}", f"paths.models_dir={root / 'models'}",
                 f"paths.reports_dir={root / 'reports'}", f"mlflow.tracking_uri=sqlite:///{root / 'mlruns/mlflow.db'}",
                 f"mlflow.artifact_location={root / 'mlruns/artifacts'}"]
        secrets = [f"deploy.api_key={KEY}", f"deploy.store.redis_url='{redis.url}'"]
        r = run_cli([*SMALL_RUN, *paths, *secrets, "task=all", "evaluation=fast"], cwd=root)
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr[-3000:]

        serve = [f"bundle={root / 'models/bundle'}", *paths, *secrets, "deploy.store.backend=redis",
                 f"deploy.decision_log={root / 'decisions/decisions.jsonl'}"]
        svc = ServiceProcess(serve, cwd=root, api_key=KEY).start()
        try:
            with httpx.Client(base_url=svc.url, timeout=30) as c:
                for i in range(3):
                    assert c.post("/score", json=_tx(i), headers={"X-API-Key": KEY}).status_code == 200
                open_health = c.get("/health")
                keyed_health = c.get("/health", headers={"X-API-Key": KEY})
        finally:
            assert svc.stop() == 0
        assert open_health.json() == {"status": "ready"}  # a probe learns the status, nothing else
        assert keyed_health.json()["store"]["url"] == redis.url.replace(PW, "***")
        outputs += [open_health.text, keyed_health.text]

        down = [*serve[:-1], f"deploy.store.redis_url='redis://default:{PW}@127.0.0.1:{free_port()}/0'",
                f"deploy.port={free_port()}"]
        r = run_cli(["task=serve", *down], cwd=root, timeout=300)
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 2 and "redis://default:***@127.0.0.1" in r.stderr, r.stderr[-2000:]
    finally:
        redis.stop()

    # what MLflow recorded, as the registry's API shows it
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns/mlflow.db'}")
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    recorded = [str(run.data.params), str(run.data.tags)]
    config_artifact = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert "api_key: '***'" in config_artifact and "redis://default:***@127.0.0.1" in config_artifact
    recorded.append(config_artifact)

    written = [p for p in root.rglob("*") if p.is_file()]
    kinds = {p.relative_to(root).parts[0] for p in written}
    assert {"data", "models", "reports", "mlruns", "outputs", "decisions"} <= kinds, kinds
    assert any(p.name == "overrides.yaml" for p in written)  # Hydra's copy of the command line
    assert any(p.name == "manifest.json" for p in written) and any(p.suffix == ".jsonl" for p in written)
    for secret in (KEY, PW):
        for text in outputs + recorded:
            assert secret not in text
        for path in written:
            assert secret.encode() not in path.read_bytes(), path


def test_a_sweep_logs_and_writes_no_key(tmp_path):
    """Hydra's launcher logs each job's overrides and copies them into every job folder."""
    r = run_cli(["-m", "task=data", "seed=1,2", "source.n_accounts=200", "source.days=7",
                 f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"deploy.api_key={KEY}"],
                cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "deploy.api_key=***" in r.stdout + r.stderr and KEY not in r.stdout + r.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "multirun.yaml" for p in written) and any(p.name == "overrides.yaml" for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
