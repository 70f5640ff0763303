"""MLlib classifiers and scoring inside Spark.

- ``model=spark_*``: parameters checked against the MLlib estimator without a JVM; the
  weighting strategies' class weights equal their row weights; a small experiment trains
  ``spark_gbt`` on the Spark feature table, evaluates, registers it in MLflow and scores
  with it (driver and Spark) with the same scores.
- ``task=score engine=spark`` with a LightGBM bundle: features by the plan compiled to
  Spark, scores by the bundle inside ``mapInArrow``: equal to the polars path's scores
  (1e-9; in fact bit for bit), thresholds, alerts and explanations.

One local[2] SparkSession serves the module; the data are a few thousand simulated events.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from omegaconf import open_dict

from aml_pipeline.build import build
from aml_pipeline.bundle import ModelBundle
from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.spark.mllib import MLLIB_CLASSIFIERS
from aml_pipeline.models.weighting import WEIGHTINGS

SMALL = ["source.n_accounts=300", "source.days=20", "source.laundering_rate=0.02", "seed=7"]
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17")


# ----------------------------------------------------------------------------- no Spark needed
@pytest.mark.parametrize("override, message", [
    ("+model.params.maxIters=3", r"model\.params\.maxIters is not an MLlib GBTClassifier parameter; allowed: .*maxIter"),
    ("model.params.maxDepth=deep", r"model\.params\.maxDepth='deep': Could not convert deep to int"),
    ("+model.params.weightCol=w", r"model\.params\.weightCol cannot be set: class weighting is chosen by the weighting group"),
])
def test_mllib_params_are_checked_against_the_estimator(compose_cfg, override, message):
    cfg = compose_cfg(["model=spark_gbt", override])
    with pytest.raises(ConfigError, match=message):
        build(cfg.model, "model")


@pytest.mark.parametrize("option", sorted(MLLIB_CLASSIFIERS))
def test_spark_model_yaml_builds_and_matches_class_defaults(compose_cfg, option):
    from omegaconf import OmegaConf

    cfg = compose_cfg([f"model={option}", "seed=11"])
    model = build(cfg.model, "model")
    cls = MLLIB_CLASSIFIERS[option]
    assert type(model) is cls and model.seed == 11 and model.name == option and model.engine == "aml_pipeline.spark.engine.SparkEngine"
    assert OmegaConf.to_container(cfg.model.params) == cls.default_params
    assert (cfg.model.early_stopping_rounds > 0) == cls.supports_early_stopping


def test_bundle_loader_knows_the_mllib_classes():
    from aml_pipeline.models.classifiers import load_classifier

    with pytest.raises(UserError, match="known: .*lightgbm.*spark_gbt, spark_rf, spark_lr"):
        load_classifier(".", {"class": "nope"})


def test_the_core_knows_the_mllib_classes_by_name_only():
    """models/ lists the Spark engine's classifiers as (module, class) strings; they must match."""
    from aml_pipeline.models.classifiers import ENGINE_CLASSIFIERS

    assert ENGINE_CLASSIFIERS == {name: (cls.__module__, cls.__qualname__) for name, cls in MLLIB_CLASSIFIERS.items()}


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_class_weights_equal_the_row_weights(name):
    y = np.array([0] * 997 + [1] * 3)
    weighting = WEIGHTINGS[name](positive_weight=7.0) if name == "fixed_positive" else WEIGHTINGS[name]()
    rows, pair = weighting.weights(y), weighting.class_weights(997, 3)
    if rows is None:
        assert pair is None
    else:
        assert pair[0] == pytest.approx(rows[0], rel=1e-12) and pair[1] == pytest.approx(rows[-1], rel=1e-12)
    with pytest.raises(UserError, match="no positive labels"):
        weighting.class_weights(10, 0)


# ----------------------------------------------------------------------------- with Spark
def _cfg(compose, root, overrides):
    cfg = compose([*SMALL, *overrides, f"paths.data_dir={root}/data", f"paths.reports_dir={root}/reports",
                   f"paths.models_dir={root}/models", f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
                   f"mlflow.artifact_location={root}/artifacts", "engine.shuffle_partitions=2"])
    with open_dict(cfg):
        cfg.engine.master = "local[2]"
    return cfg


@pytest.fixture(scope="module")
def gbt_run(spark, tmp_path_factory):
    """data + features (polars), then train / evaluate (MLflow) with model=spark_gbt."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from aml_pipeline.tasks import run_task
    from tests.conftest import CONF

    root = tmp_path_factory.mktemp("gbt")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = _cfg(lambda o: compose(config_name="config", overrides=o), root,
                   ["model=spark_gbt", "model.params.maxIter=15", "weighting=sqrt_inverse_frequency"])
    GlobalHydra.instance().clear()
    results = {}
    for task in ("data", "features", "train", "evaluate"):
        with open_dict(cfg):
            cfg.task = task
        results[task] = run_task(cfg)
    return cfg, root, results


@needs_java
@pytest.mark.slow
def test_spark_gbt_trains_registers_and_scores(gbt_run):
    from aml_pipeline.registry import resolve_bundle

    cfg, root, results = gbt_run
    manifest = json.loads((root / "models/bundle/manifest.json").read_text())
    assert manifest["model"]["class"] == "spark_gbt" and "model.spark.zip" in manifest["files"]
    assert manifest["lineage"]["weighting"] == "sqrt_inverse_frequency"
    assert 1 <= results["train"]["best_iteration"] <= 15  # early stopping on the validation window
    assert 0 < results["train"]["valid_pr_auc"] <= 1
    reg = results["evaluate"]["registration"]
    assert reg["version"] == 1
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert 0 < metrics["pr_auc"] <= 1 and set(metrics["thresholds"]) >= {"*"}
    # the registered bundle (verified against its hash) rescoring the test window on the driver
    bundle = resolve_bundle("models:/aml-scorer@challenger", cfg)
    test = pl.read_parquet(root / "data/features/features.parquet").filter(pl.col("split") == "test")
    decisions = pl.read_parquet(root / "data/scores/test.parquet")
    assert np.max(np.abs(bundle.predict_features(test) - decisions["score"].to_numpy())) <= 1e-12
    importance = bundle.model.feature_importance()
    assert set(importance) == set(bundle.feature_columns()) and sum(importance.values()) == pytest.approx(1.0)


@needs_java
@pytest.mark.slow
def test_spark_gbt_bundle_scores_in_spark_like_on_the_driver(gbt_run, spark):
    from aml_pipeline.spark.scoring import score_frame

    _, root, _ = gbt_run
    bundle = ModelBundle.load(root / "models/bundle")
    path = root / "data/features/features.parquet"
    test = pl.read_parquet(path).filter(pl.col("split") == "test")
    driver = bundle.score_features(test, 3, "alerts")
    in_spark = pl.from_arrow(score_frame(bundle, spark.read.parquet(str(path)).where("split = 'test'"), 3, "alerts").toArrow())
    joined = driver.join(in_spark, on="event_id", suffix="_s")
    assert joined.height == test.height == in_spark.height
    assert (joined["score"] - joined["score_s"]).abs().max() <= 1e-12
    assert joined["alert"].to_list() == joined["alert_s"].to_list()
    assert joined["bundle_hash"].to_list() == joined["bundle_hash_s"].to_list()


@needs_java
@pytest.mark.slow
def test_lightgbm_bundle_scores_in_spark_as_on_polars(spark, tmp_path, compose_cfg):
    """task=score engine=spark vs engine=polars, same bundle and events: same decisions."""
    from aml_pipeline.tasks import run_task

    cfg = _cfg(compose_cfg, tmp_path, ["model=lightgbm", "model.params.n_estimators=60"])
    for task in ("data", "features", "train"):
        with open_dict(cfg):
            cfg.task = task
        run_task(cfg)
    events = tmp_path / "data/validated/transactions.parquet"
    outputs = {}
    for engine in ("polars", "spark"):
        with open_dict(cfg):
            cfg.task, cfg.engine.name = "score", engine
            cfg.bundle, cfg.input = str(tmp_path / "models/bundle"), str(events)
            cfg.output = str(tmp_path / f"scores_{engine}.parquet")
            cfg.scoring.explain = "alerts"
        run_task(cfg)
        outputs[engine] = pl.read_parquet(cfg.output)
    p, s = outputs["polars"], outputs["spark"]
    assert p.height == s.height == pl.read_parquet(events).height
    assert p.columns == s.columns
    joined = p.join(s, on="event_id", suffix="_s")
    assert joined.height == p.height
    assert (joined["score"] - joined["score_s"]).abs().max() <= 1e-9
    assert (joined["score"] == joined["score_s"]).all()  # bit for bit, in fact
    for col in ("threshold", "alert", "jurisdiction", "model_version", "bundle_hash", "config_hash"):
        assert joined[col].to_list() == joined[f"{col}_s"].to_list(), col
    assert joined["alert"].sum() > 0
    assert joined["top_features"].to_list() == joined["top_features_s"].to_list()
