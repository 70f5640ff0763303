"""The whole offline experiment as a user runs it: one small run shared by several checks.

Runs ``python -m aml_pipeline +experiment=quickstart`` shrunk to a few thousand events in a
temporary folder (its own data/, reports/, models/ and MLflow store), then checks the
reports, the bundle, the registry and that scoring reproduces the evaluation exactly.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.errors import UserError
from tests.conftest import run_cli

SMALL = ["+experiment=quickstart", "source.n_accounts=800", "source.days=30", "source.laundering_rate=0.02"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("quickstart")
    res = run_cli(SMALL, cwd=d)
    assert res.returncode == 0, res.stderr[-3000:]
    (d / "stdout.txt").write_text(res.stdout)
    return d


def test_quickstart_writes_reports_bundle_and_registration(run_dir):
    metrics = json.loads((run_dir / "reports/metrics.json").read_text())
    for key in ("pr_auc", "roc_auc", "recall_at_precision", "per_typology_recall", "thresholds", "baseline"):
        assert key in metrics, key
    assert 0 < metrics["pr_auc"] <= 1 and metrics["n_positive"] > 0
    assert set(metrics["thresholds"]) >= {"*", "US"}
    for png in ("pr_curve.png", "feature_importance.png"):
        assert (run_dir / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Model vs rule baseline" in (run_dir / "reports/summary.md").read_text()
    # learned baselines (same split, rounds chosen on validation), the lift, instance figures
    assert set(metrics["baselines"]) == {"rules", "raw", "raw_windows"} and metrics["baselines"]["rules"] == metrics["baseline"]
    for name in ("raw", "raw_windows"):
        block = metrics["baselines"][name]
        assert 0 < block["pr_auc"] <= 1 and block["rounds"] >= 1 and block["valid_pr_auc"] is not None
        assert metrics["lift"][name] == pytest.approx(metrics["pr_auc"] / block["pr_auc"], rel=1e-4)
    instances = metrics["instances"]
    assert instances["available"] and instances["instances"] > 0
    assert instances["operating_point"]["instance_recall"]["per_typology"]
    assert instances["at_precision"]["target_precision"] == 0.5
    assert "lift over raw+windows" in (run_dir / "reports/summary.md").read_text()
    reg = json.loads((run_dir / "models/registered.json").read_text())
    assert reg["version"] == 1 and reg["model_uri"] == "models:/aml-scorer@challenger"
    out = (run_dir / "stdout.txt").read_text()
    for stage in ("data: counts reconcile", "features", "train", "evaluate (test window)", "lift over raw+windows",
                  "instance recall"):
        assert stage in out


def test_test_decisions_are_traceable(run_dir):
    scores = pl.read_parquet(run_dir / "data/scores/test.parquet")
    bundle = ModelBundle.load(run_dir / "models/bundle")
    for col in ("event_id", "score", "threshold", "jurisdiction", "alert", "top_features", "model_name",
                "model_version", "run_id", "config_hash", *bundle.feature_columns()):
        assert col in scores.columns, col
    assert scores["model_version"].unique().to_list() == ["1"]
    alerts = scores.filter(pl.col("alert"))
    assert alerts.height > 0
    assert alerts["top_features"].list.len().min() == 5  # every alert explains itself
    first = alerts["top_features"][0][0]
    assert first["feature"] in bundle.feature_columns() and first["contribution"] is not None


def test_bundle_round_trip_scores_identically(run_dir):
    bundle = ModelBundle.load(run_dir / "models/bundle")
    feats = pl.read_parquet(run_dir / "data/features/features.parquet").filter(pl.col("split") == "test")
    expected = pl.read_parquet(run_dir / "data/scores/test.parquet")["score"].to_numpy()
    assert np.max(np.abs(bundle.predict_features(feats) - expected)) <= 1e-12


def test_registered_bundle_rescores_test_window_exactly(run_dir):
    """task=score with models:/...@alias on the validated events reproduces evaluation's scores."""
    res = run_cli(["task=score", "bundle=models:/aml-scorer@challenger", "input=data/validated/transactions.parquet",
                   "output=data/scores/rescored.parquet"], cwd=run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    rescored = pl.read_parquet(run_dir / "data/scores/rescored.parquet")
    test = pl.read_parquet(run_dir / "data/scores/test.parquet")
    joined = test.select("event_id", "score", "alert").join(
        rescored.select("event_id", pl.col("score").alias("rescore"), pl.col("alert").alias("realert"), "model_version"),
        on="event_id")
    assert joined.height == test.height
    assert (joined["score"] - joined["rescore"]).abs().max() <= 1e-12
    assert joined["alert"].to_list() == joined["realert"].to_list()
    assert joined["model_version"].unique().to_list() == ["1"]


def test_tampered_bundle_is_refused(run_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(run_dir / "models/bundle", copy)
    thresholds = json.loads((copy / "thresholds.json").read_text())
    thresholds["*"]["threshold"] = 0.0
    (copy / "thresholds.json").write_text(json.dumps(thresholds))
    with pytest.raises(UserError, match="differs from the manifest"):
        ModelBundle.load(copy)
    with pytest.raises(UserError, match="does not match the registered"):
        ModelBundle.load(run_dir / "models/bundle", expected_hash="0" * 64)


def test_score_with_missing_bundle_is_one_line(run_dir):
    res = run_cli(["task=score", "bundle=models/nope", "input=data/validated/transactions.parquet"], cwd=run_dir)
    assert res.returncode == 2 and res.stderr.strip().startswith("error: bundle models/nope")


@pytest.mark.slow
def test_sweep_writes_ranked_comparison(tmp_path):
    res = run_cli(["-m", *SMALL, "model=lightgbm,sklearn_lr", "mlflow.enabled=false",
                   "hydra.sweep.dir=multirun/sweep"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    table = pl.read_csv(tmp_path / "multirun/sweep/sweep_summary.csv")
    assert table.height == 2 and table["status"].to_list() == ["ok", "ok"]
    # ranked by validation PR-AUC (the test PR-AUC is shown, never used to choose)
    assert table["valid_pr_auc"].to_list() == sorted(table["valid_pr_auc"].to_list(), reverse=True)
    assert table["test_pr_auc"].null_count() == 0
    models = {next(o for o in ov.split() if o.startswith("model=")) for ov in table["overrides"].to_list()}
    assert models == {"model=lightgbm", "model=sklearn_lr"}
    assert "Ranked by validation PR-AUC" in (tmp_path / "multirun/sweep/sweep_summary.md").read_text()
