"""Gated promotion (task=promote) and where a sweep points the alias, on a real MLflow store.

One small world is trained once; the versions differ only in their classifier: a weak one
(a single two-leaf tree) and the small-run LightGBM. The weak one, first registered, becomes
champion (there is none yet); the good one passes the gate and takes over; a weak challenger
after it is blocked, the alias stays, and the blocked attempt is still recorded. The gate's
rules are also checked on hand-made figures a reader can verify.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest

from aml_pipeline.lifecycle.gate import figures, judge, precision_targets
from aml_pipeline.lifecycle.promote import PromotionBlocked
from aml_pipeline.registry import alias_version
from aml_pipeline.tasks import run_task
from tests.conftest import SMALL_RUN, compose_config, run_cli, train_small_run

WEAK = ["model.params.n_estimators=1", "model.params.num_leaves=2", "model.early_stopping_rounds=0"]
GATE = SimpleNamespace(pr_auc_epsilon=0.01, alert_volume_tolerance=0.25, jurisdiction_precision="regression",
                       precision_slack=0.0, min_alerts=2)


# ----------------------------------------------------------------------------- the rules by hand
def test_gate_rules_on_hand_made_figures():
    # 10 events, 4 positives; both models judged by one threshold of 0.5 on jurisdiction "*"
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    thresholds = {"*": {"threshold": 0.5, "target": "precision", "value": 0.6}}
    jur = np.array(["US"] * 10)
    good = figures(y, np.array([.9, .8, .7, .6, .55, .3, .2, .1, .1, .1]), jur, thresholds)
    assert good["alerts"] == 5 and good["true_alerts"] == 4 and good["precision"] == pytest.approx(0.8)
    assert good["jurisdictions"]["*"]["precision"] == pytest.approx(0.8) and good["pr_auc"] == pytest.approx(1.0)
    bad = figures(y, np.array([.9, .2, .2, .6, .8, .7, .6, .1, .1, .1]), jur, thresholds)
    assert bad["alerts"] == 5 and bad["true_alerts"] == 2  # precision 0.4 < target 0.6
    targets = precision_targets(thresholds)
    assert targets == {"*": 0.6}
    assert judge(good, bad, targets, GATE)["passed"]
    verdict = judge(bad, good, targets, GATE)
    failed = {c["name"] for c in verdict["checks"] if c["passed"] is False}
    assert not verdict["passed"] and failed == {"pr_auc", "precision[*]"}  # same volume: 5 alerts each
    # no champion: nothing to compare with; regression mode passes, strict blocks the missed target
    assert judge(bad, None, targets, GATE)["passed"]
    strict = judge(bad, None, targets, SimpleNamespace(**{**vars(GATE), "jurisdiction_precision": "strict"}))
    assert not strict["passed"] and "precision[*]" in strict["reason"]
    # a champion with too few alerts to show it missed: the challenger must meet the target itself
    quiet = {**good, "jurisdictions": {"*": {**good["jurisdictions"]["*"], "alerts": 1, "precision": 0.0}}}
    v = judge(bad, quiet, targets, SimpleNamespace(**{**vars(GATE), "pr_auc_epsilon": 1.0}))
    assert [c["name"] for c in v["checks"] if c["passed"] is False] == ["precision[*]"]
    # a challenger with too few alerts is reported, not judged
    few = judge(bad, good, targets, SimpleNamespace(**{**vars(GATE), "pr_auc_epsilon": 1.0, "min_alerts": 6}))
    assert few["passed"] and next(c for c in few["checks"] if c["name"] == "precision[*]")["passed"] is None
    # twice the alerts at the same ranking: blocked on volume alone
    noisy = {**good, "alerts": 10}
    v = judge(noisy, good, targets, SimpleNamespace(**{**vars(GATE), "jurisdiction_precision": "off"}))
    assert not v["passed"] and [c["name"] for c in v["checks"] if not c["passed"]] == ["alert_volume"]
    assert "+100.0%" in v["reason"]


# ----------------------------------------------------------------------------- real registry
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("promote")
    paths, _, _ = train_small_run(root)
    store = [f"mlflow.tracking_uri=sqlite:///{root}/mlruns/mlflow.db", f"mlflow.artifact_location={root}/mlruns/artifacts"]
    return SimpleNamespace(root=root, base=[*SMALL_RUN, *paths, *store, "evaluation=fast"], store=store)


def register(world, model_overrides: list[str]) -> int:
    """Train with these model overrides and evaluate: a new version, aliased challenger."""
    run_task(compose_config([*world.base, *model_overrides, "task=train"]))
    reg = run_task(compose_config([*world.base, *model_overrides, "task=evaluate"]))["registration"]
    return reg["version"]


def aliases(world) -> dict:
    cfg = compose_config(world.base)
    return {a: (alias_version(cfg, a) or {}).get("version") for a in ("challenger", "champion")}


def promote(world, *extra):
    return run_task(compose_config([*world.base, "task=promote", *extra]))


def test_first_challenger_becomes_champion_then_a_better_one_replaces_it(world):
    weak = register(world, WEAK)
    first = promote(world)
    assert first["decision"] == "promoted" and first["champion_before"] is None and first["champion_after"] == weak
    assert first["champion"] is None and first["gate"]["passed"]
    assert aliases(world) == {"challenger": weak, "champion": weak}
    good = register(world, [])
    assert aliases(world) == {"challenger": good, "champion": weak}  # evaluation never moves the champion
    second = promote(world, "promote.alert_volume_tolerance=1.0")  # the better model alerts more: judged on ranking
    f_new, f_old = second["challenger"]["figures"], second["champion"]["figures"]
    assert f_new["pr_auc"] > f_old["pr_auc"] + 0.05, (f_new["pr_auc"], f_old["pr_auc"])
    assert second["decision"] == "promoted" and (second["champion_before"], second["champion_after"]) == (weak, good)
    assert aliases(world)["champion"] == good
    written = json.loads((world.root / "reports/promote.json").read_text())
    assert written["decision"] == "promoted" and written["challenger"]["version"] == good
    # both scored on the same window: the test window of the run, later than either's training
    split = json.loads((world.root / "data/features/split.json").read_text())
    assert written["window"]["start"][:19] == split["test_start"][:19]
    assert written["window"]["labelled"] == split["rows"]["test"]
    run = mlflow.MlflowClient().get_run(written["mlflow_run_id"])
    assert run.data.tags["promotion.decision"] == "promoted" and run.data.tags["promotion.champion_after"] == str(good)
    assert run.data.metrics["challenger_pr_auc"] == pytest.approx(f_new["pr_auc"])


def test_a_worse_challenger_is_blocked_and_recorded(world):
    champion = aliases(world)["champion"]
    assert champion is not None  # set by the test above (same module, run in order)
    worse = register(world, WEAK)
    with pytest.raises(PromotionBlocked, match=r"promotion blocked: version \d+ stays challenger.*pr_auc: challenger"):
        promote(world)
    assert aliases(world) == {"challenger": worse, "champion": champion}
    record = json.loads((world.root / "reports/promote.json").read_text())
    assert record["decision"] == "blocked" and record["champion_after"] == champion
    assert next(c for c in record["gate"]["checks"] if c["name"] == "pr_auc")["passed"] is False
    client = mlflow.MlflowClient()
    assert client.get_run(record["mlflow_run_id"]).data.tags["promotion.decision"] == "blocked"
    assert client.get_model_version("aml-scorer", str(worse)).tags["promotion"] == "blocked"
    # as a user sees it: one line on stderr, exit code 3, the alias unchanged
    paths = [o for o in world.base if o.startswith(("paths.", "mlflow."))]
    res = run_cli(["task=promote", *paths], cwd=world.root)
    assert res.returncode == 3, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: promotion blocked: version"), res.stderr
    assert aliases(world)["champion"] == champion


@pytest.mark.slow
def test_promote_on_spark_judges_with_the_polars_figures(world):
    """engine=spark: both versions re-scored by Spark (features and scores) give the polars
    run's figures, so the weaker challenger above stays blocked by the same checks."""
    from aml_pipeline.spark.session import stop_session

    on_polars = json.loads((world.root / "reports/promote.json").read_text())
    assert on_polars["decision"] == "blocked"  # the test above, in order
    try:
        with pytest.raises(PromotionBlocked, match="pr_auc: challenger"):
            promote(world, "engine=spark", "engine.master='local[2]'", "engine.shuffle_partitions=2")
    finally:
        stop_session()
    on_spark = json.loads((world.root / "reports/promote.json").read_text())
    assert on_spark["window"] == on_polars["window"] and on_spark["champion_after"] == on_polars["champion_after"]
    for role in ("challenger", "champion"):
        a, b = on_polars[role]["figures"], on_spark[role]["figures"]
        assert (b["alerts"], b["true_alerts"]) == (a["alerts"], a["true_alerts"]), role
        assert b["pr_auc"] == pytest.approx(a["pr_auc"], rel=1e-12), role
    assert [(c["name"], c["passed"]) for c in on_spark["gate"]["checks"]] == \
        [(c["name"], c["passed"]) for c in on_polars["gate"]["checks"]]


def test_window_inside_training_is_refused(world):
    from aml_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="promote.window_start=2020-01-01.*in-sample"):
        promote(world, "promote.window_start=2020-01-01T00:00:00Z")
    with pytest.raises(ConfigError, match="promote.pr_auc_epsilon=2.0: must be in"):
        promote(world, "promote.pr_auc_epsilon=2.0")


@pytest.mark.slow
def test_a_sweep_aliases_its_best_job_by_validation_and_nests_its_runs(tmp_path):
    # job 0 (80 trees) is better on validation than job 1 (one stump), which finishes last
    res = run_cli(["-m", *SMALL_RUN, "evaluation=fast", "model.params.n_estimators=80,1",
                   "model.params.num_leaves=15", "hydra.sweep.dir=multirun/sweep"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = tmp_path / "multirun/sweep"
    regs = {j: json.loads((sweep / j / "models/registered.json").read_text()) for j in ("0", "1")}
    valid = {j: json.loads((sweep / j / "models/bundle/manifest.json").read_text())["metrics"]["valid_pr_auc"] for j in regs}
    assert valid["0"] > valid["1"]
    assert {r["alias"] for r in regs.values()} == {None}  # jobs register versions, move no alias
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    assert int(client.get_model_version_by_alias("aml-scorer", "challenger").version) == regs["0"]["version"]
    assert regs["1"]["version"] > regs["0"]["version"]  # the last registered is not the one aliased
    parent = (sweep / "mlflow_parent_run.txt").read_text().strip()
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED" and parent_run.data.tags["best_job"] == "0"
    for reg in regs.values():
        assert client.get_run(reg["run_id"]).data.tags["mlflow.parentRunId"] == parent


@pytest.mark.slow
def test_a_sweep_that_dies_closes_its_parent_run_as_failed(tmp_path):
    """A job whose error ends the multirun (here the first, refused in task=data) leaves no
    parent run RUNNING in MLflow: it is closed FAILED, saying why."""
    res = run_cli(["-m", *SMALL_RUN, "evaluation=fast", "source.n_accounts=-5,400", "hydra.sweep.dir=multirun/sweep"],
                  cwd=tmp_path)
    assert res.returncode == 2 and "source.n_accounts must be >= 200" in res.stderr, res.stderr[-3000:]
    parent = (tmp_path / "multirun/sweep/mlflow_parent_run.txt").read_text().strip()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = mlflow.MlflowClient().get_run(parent)
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert "ended before its summary" in run.data.tags["aml.sweep_outcome"]


def test_a_version_registered_before_the_pyfunc_moved_still_unpickles():
    """MLflow pickles the Python model by its class's import path; versions registered before
    the move name aml_pipeline.lifecycle.pyfunc, which must still resolve to the same class."""
    import pickle

    from aml_pipeline.pyfunc import TransactionScorer

    data = pickle.dumps(TransactionScorer("ab" * 32, top_k=3), protocol=0)  # text opcodes: names without lengths
    assert b"aml_pipeline.pyfunc\nTransactionScorer" in data
    old = pickle.loads(data.replace(b"aml_pipeline.pyfunc\n", b"aml_pipeline.lifecycle.pyfunc\n"))
    assert type(old) is TransactionScorer and old.bundle_sha256 == "ab" * 32 and old.top_k == 3


def test_the_registered_model_takes_canonical_transactions(world):
    """MLflow's own loader: canonical transactions in; score, threshold, alert, reasons out,
    as the bundle decides them; hyper-parameters and weighting logged as params."""
    import polars as pl

    from aml_pipeline.bundle import ModelBundle

    version = aliases(world)["challenger"]
    model = mlflow.pyfunc.load_model(f"models:/aml-scorer/{version}")
    inputs = model.metadata.get_input_schema().input_names()
    assert {"event_id", "event_time", "src_account", "dst_account", "amount"} <= set(inputs) and "label" not in inputs
    assert model.metadata.get_output_schema().input_names() == ["event_id", "score", "threshold", "alert", "reasons"]
    events = pl.read_parquet(world.root / "data/validated/transactions.parquet").sort("event_time").tail(300)
    naive = events.select(inputs).with_columns(pl.col("event_time").dt.replace_time_zone(None))  # MLflow's datetimes
    out = model.predict(naive.to_pandas())
    assert list(out["event_id"]) == events["event_id"].to_list()
    bundle = ModelBundle.load(world.root / "models/bundle")
    expected = bundle.score(events.select(inputs), explain="none")
    assert abs(out["score"].to_numpy() - expected["score"].to_numpy()).max() <= 1e-12
    assert list(out["alert"]) == expected["alert"].to_list()
    assert all(len(r.split("; ")) == 5 for r in out["reasons"])
    run = mlflow.MlflowClient().get_run(mlflow.MlflowClient().get_model_version("aml-scorer", str(version)).run_id)
    assert run.data.params["model.num_leaves"] == "2" and run.data.params["weighting.positive_weight"] == "1.0"
    assert run.data.params["model.early_stopping_rounds"] == "0" and run.data.params["model.num_iterations"] == "1"


@pytest.mark.slow
def test_mlflow_models_serve_takes_canonical_transactions(world, tmp_path):
    """``mlflow models serve`` (MLflow's own scoring server, in this environment) answers
    /invocations with the bundle's decisions for canonical transactions: a user who knows
    only MLflow can put the registered model behind HTTP."""
    import subprocess
    import time

    import httpx
    import polars as pl

    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.testing.local_redis import free_port

    version = aliases(world)["challenger"]
    port = free_port()
    uri = f"sqlite:///{world.root}/mlruns/mlflow.db"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", f"models:/aml-scorer/{version}", "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                              stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 180 s"
            time.sleep(1)
        inputs = mlflow.pyfunc.load_model(f"models:/aml-scorer/{version}").metadata.get_input_schema().input_names()
        events = pl.read_parquet(world.root / "data/validated/transactions.parquet").sort("event_time").tail(200)
        body = events.select(inputs).with_columns(pl.col("event_time").dt.replace_time_zone(None)).to_pandas()
        reply = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                           content=json.dumps({"dataframe_split": json.loads(body.to_json(orient="split", date_format="iso"))}),
                           headers={"content-type": "application/json"})
        assert reply.status_code == 200, reply.text[:2000]
        decisions = reply.json()["predictions"]
        expected = ModelBundle.load(world.root / "models/bundle").score(events.select(inputs), explain="none")
        assert [d["event_id"] for d in decisions] == events["event_id"].to_list()
        assert [bool(d["alert"]) for d in decisions] == expected["alert"].to_list()
        assert max(abs(d["score"] - s) for d, s in zip(decisions, expected["score"].to_list())) <= 1e-9
    finally:
        server.terminate()
        server.wait(30)
        log.close()
