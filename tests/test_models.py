"""Classifiers and weightings on a small deterministic imbalanced dataset.

Each classifier must rank clearly better than chance, save/load bit-identically, score a
single row exactly like a batch, and refuse bad configuration with the key named.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skops.io as sio
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import FunctionTransformer

from aml_pipeline.build import build
from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.models import (
    CLASSIFIERS,
    WEIGHTINGS,
    Classifier,
    FixedPositive,
    HistGradientBoostingClassifier,
    InverseFrequency,
    LightGBMClassifier,
    LogisticRegressionClassifier,
    NoWeighting,
    RandomForestClassifier,
    SqrtInverseFrequency,
    Weighting,
    load_classifier,
)
from tests.conftest import CONF

N_ROWS, N_FEATURES = 4000, 8
NAMES = [f"feat_{i}" for i in range(N_FEATURES)]
TRAIN, VALID, TEST = slice(0, 2400), slice(2400, 3200), slice(3200, None)
#: Small enough to keep the file fast; the defaults are checked against the YAML separately.
FAST_PARAMS = {
    "lightgbm": {"num_threads": 1},
    "sklearn_hgb": {"learning_rate": 0.1, "max_iter": 200},
    "sklearn_lr": {},
    "sklearn_rf": {"n_estimators": 100},
}


def make_data(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """~3 % positives driven by three features and one interaction; 5 % NaN everywhere."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N_ROWS, N_FEATURES))
    logit = -5.3 + 1.6 * X[:, 0] + 1.0 * X[:, 1] - 0.8 * X[:, 2] + 0.6 * X[:, 3] * X[:, 4]
    y = (rng.random(N_ROWS) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X, y


@pytest.fixture(scope="module")
def data():
    return make_data()


def fit(name: str, X, y, **kwargs) -> Classifier:
    model = CLASSIFIERS[name](early_stopping_rounds=kwargs.pop("rounds", 20), params=FAST_PARAMS[name], seed=3)
    return model.fit(X[TRAIN], y[TRAIN], X_valid=X[VALID], y_valid=y[VALID], feature_names=NAMES, **kwargs)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return {name: fit(name, X, y) for name in CLASSIFIERS}


# ----------------------------------------------------------------------------- classifiers
def test_synthetic_data_is_imbalanced(data):
    _, y = data
    assert 0.02 < y.mean() < 0.04 and y[TEST].sum() >= 10


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_beats_random_ranking(fitted, data, name):
    X, y = data
    proba = fitted[name].predict_proba(X[TEST])
    assert proba.shape == (X[TEST].shape[0],) and proba.dtype == np.float64
    assert ((proba >= 0) & (proba <= 1)).all()
    assert average_precision_score(y[TEST], proba) >= 3 * y[TEST].mean()


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_save_load_is_bit_identical(fitted, data, tmp_path, name):
    X, _ = data
    model = fitted[name]
    meta = json.loads(json.dumps(model.save(tmp_path)))  # must survive JSON
    assert meta["class"] == name and (tmp_path / meta["file"]).is_file()
    assert meta["feature_names"] == NAMES and meta["best_iteration"] == model.best_iteration
    loaded = load_classifier(tmp_path, meta)
    assert type(loaded) is type(model) and loaded.feature_names == NAMES
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.feature_importance() == model.feature_importance()


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_predict_one_matches_batch(fitted, data, name):
    X, _ = data
    rows = X[TEST][:25]
    batch = fitted[name].predict_proba(rows)
    single = np.array([fitted[name].predict_one(r) for r in rows])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-12)


def test_lightgbm_single_row_fast_path_gives_the_boosters_own_score(fitted, data):
    """predict_one runs the C library's single-row path (models/lightgbm_row.py): the same
    double as Booster.predict, missing values included; a copy sets up its own."""
    import copy

    from aml_pipeline.models.lightgbm_row import single_row_predictor

    model = fitted["lightgbm"]
    booster = model._model
    assert single_row_predictor(booster) is not None  # this LightGBM exposes the path
    X, _ = data
    rows = X[TEST][:200].copy()
    rows[np.random.default_rng(1).random(rows.shape) < 0.3] = np.nan
    expected = booster.predict(rows, num_threads=1)
    got = np.array([model.predict_one(r) for r in rows])
    assert np.array_equal(got, expected)
    assert model.__dict__["_row_predictor"][1] is not None  # it took the fast path
    twin = copy.deepcopy(model)
    assert "_row_predictor" not in twin.__dict__
    assert twin.predict_one(rows[0]) == expected[0]
    with pytest.raises(ValueError, match="features"):
        model.predict_one(rows[0][:-1])


@pytest.mark.parametrize("name", ["lightgbm", "sklearn_hgb", "sklearn_rf"])
def test_training_is_deterministic(fitted, data, name):
    X, y = data
    again = fit(name, X, y)
    assert again.best_iteration == fitted[name].best_iteration
    assert np.array_equal(again.predict_proba(X), fitted[name].predict_proba(X))


def test_rf_scores_do_not_depend_on_batching(fitted, data, monkeypatch):
    X, _ = data
    rf = fitted["sklearn_rf"]
    whole = rf.predict_proba(X)
    monkeypatch.setattr(RandomForestClassifier, "_min_chunk", 500)  # force the threaded path
    assert np.array_equal(rf.predict_proba(X), whole)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_feature_importance_is_keyed_by_name(fitted, name):
    imp = fitted[name].feature_importance()
    assert list(imp) == NAMES and all(v >= 0 for v in imp.values())
    assert max(imp, key=imp.get) == "feat_0"  # the strongest driver


def test_lightgbm_early_stopping_sets_best_iteration(fitted):
    model = fitted["lightgbm"]
    assert model.best_iteration is not None and 0 < model.best_iteration < 500
    assert model._model.num_trees() == model.best_iteration  # only the scoring trees are kept


def test_lightgbm_without_validation_or_rounds_trains_every_round(data):
    X, y = data
    params = {"num_threads": 1, "n_estimators": 30}
    for model in (LightGBMClassifier(params=params).fit(X[TRAIN], y[TRAIN]),
                  LightGBMClassifier(0, params).fit(X[TRAIN], y[TRAIN], X_valid=X[VALID], y_valid=y[VALID])):
        assert model.best_iteration is None and model._model.num_trees() == 30


def test_hgb_early_stopping_refits_to_best_iteration(fitted):
    model = fitted["sklearn_hgb"]
    assert model.best_iteration is not None and 0 < model.best_iteration < 200
    assert model._model.n_iter_ == model.best_iteration and not model._model.early_stopping


def test_early_stopping_needs_validation_positives(data):
    X, y = data
    with pytest.raises(UserError, match="validation window has no positive labels"):
        LightGBMClassifier(params={"num_threads": 1}).fit(X[TRAIN], y[TRAIN], X_valid=X[VALID],
                                                          y_valid=np.zeros(800))


def test_lightgbm_contributions_add_up_to_log_odds(fitted, data):
    X, _ = data
    model = fitted["lightgbm"]
    contrib = model.contributions(X[TEST])
    assert contrib.shape == (X[TEST].shape[0], N_FEATURES)
    raw = model._model.predict(X[TEST], raw_score=True)
    bias = raw - contrib.sum(axis=1)
    np.testing.assert_allclose(bias, bias[0], atol=1e-9)  # one bias for every row
    np.testing.assert_allclose(raw, model.raw_score(X[TEST]), atol=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), model.predict_proba(X[TEST]), atol=1e-12)


def test_lr_contributions_add_up_to_decision_function(fitted, data):
    X, _ = data
    model = fitted["sklearn_lr"]
    contrib = model.contributions(X[TEST])
    assert contrib.shape == (X[TEST].shape[0], N_FEATURES) and not np.isnan(contrib).any()
    logit = contrib.sum(axis=1) + model._model[-1].intercept_[0]
    np.testing.assert_allclose(logit, model._model.decision_function(X[TEST]), atol=1e-10)


@pytest.mark.parametrize("name", ["sklearn_hgb", "sklearn_rf"])
def test_models_without_local_attribution_return_none(fitted, data, name):
    assert fitted[name].contributions(data[0][:5]) is None


def test_wrong_feature_count_is_refused(fitted):
    with pytest.raises(ValueError, match="trained on 8"):
        fitted["lightgbm"].predict_proba(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="trained on 8"):
        fitted["sklearn_lr"].predict_one(np.zeros(7))


def test_single_class_training_window_is_refused(data):
    X, _ = data
    with pytest.raises(UserError, match="training window has no positive labels"):
        LogisticRegressionClassifier().fit(X[:100], np.zeros(100))


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name, key", [
    ("lightgbm", "num_leafs"), ("sklearn_hgb", "n_estimators"), ("sklearn_lr", "Cs"), ("sklearn_rf", "n_trees"),
])
def test_unknown_param_names_the_key(name, key):
    with pytest.raises(ConfigError, match=rf"model\.params\.{key}\b"):
        CLASSIFIERS[name](params={key: 1})


def test_lightgbm_typo_suggests_the_parameter():
    with pytest.raises(ConfigError, match="did you mean .*num_leaves"):
        LightGBMClassifier(params={"num_leafs": 8})


def test_sklearn_unknown_param_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: .*min_samples_leaf.*n_estimators"):
        RandomForestClassifier(params={"n_trees": 10})


def test_sklearn_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.params\.min_samples_leaf"):
        RandomForestClassifier(params={"min_samples_leaf": -1})


def test_lightgbm_aliases_are_merged_and_conflicts_refused():
    model = LightGBMClassifier(params={"num_iterations": 40, "reg_lambda": 1.0})
    assert model.params["num_iterations"] == 40 and model.params["lambda_l2"] == 1.0
    assert "n_estimators" not in model.params
    with pytest.raises(ConfigError, match="same LightGBM parameter"):
        LightGBMClassifier(params={"n_estimators": 10, "num_iterations": 20})


@pytest.mark.parametrize("name, key", [
    ("lightgbm", "scale_pos_weight"), ("lightgbm", "objective"), ("lightgbm", "random_state"),
    ("lightgbm", "class_weight"), ("sklearn_hgb", "early_stopping"), ("sklearn_rf", "class_weight"),
    ("sklearn_lr", "random_state"),
])
def test_pipeline_owned_params_are_refused(name, key):
    with pytest.raises(ConfigError, match=rf"model\.params\.{key} cannot be set"):
        CLASSIFIERS[name](params={key: 1})


def test_negative_early_stopping_rounds_refused():
    with pytest.raises(ConfigError, match="model.early_stopping_rounds"):
        LightGBMClassifier(early_stopping_rounds=-1)


# ----------------------------------------------------------------------------- loading
def test_load_classifier_refuses_unknown_class(fitted, tmp_path):
    meta = fitted["sklearn_lr"].save(tmp_path)
    for bad in ("os.system", "LogisticRegressionClassifier", None):
        with pytest.raises(UserError, match="unknown"):
            load_classifier(tmp_path, {**meta, "class": bad})


def test_skops_file_with_foreign_types_is_refused(fitted, tmp_path):
    meta = fitted["sklearn_lr"].save(tmp_path)
    sio.dump(FunctionTransformer(func=json.dumps), tmp_path / meta["file"])
    with pytest.raises(ValueError, match="outside sklearn/numpy"):
        load_classifier(tmp_path, meta)


def test_skops_file_of_the_wrong_estimator_is_refused(fitted, tmp_path):
    meta = fitted["sklearn_rf"].save(tmp_path)
    sio.dump(fitted["sklearn_lr"]._model, tmp_path / meta["file"])
    with pytest.raises(ValueError, match="expected RandomForestClassifier"):
        load_classifier(tmp_path, meta)


# ----------------------------------------------------------------------------- weightings
Y = np.array([0, 0, 0, 1])


def test_no_weighting():
    assert NoWeighting().weights(Y) is None


def test_inverse_frequency():
    np.testing.assert_allclose(InverseFrequency().weights(Y), [2 / 3, 2 / 3, 2 / 3, 2.0])


def test_sqrt_inverse_frequency():
    w = SqrtInverseFrequency().weights(Y)
    # sqrt([2/3, 2]) / mean = 4/(3+sqrt3) and 2(sqrt3-1)
    np.testing.assert_allclose(w, [4 / (3 + math.sqrt(3))] * 3 + [2 * (math.sqrt(3) - 1)])
    assert w.mean() == pytest.approx(1.0)


def test_fixed_positive():
    np.testing.assert_array_equal(FixedPositive(20).weights(Y), [1.0, 1.0, 1.0, 20.0])


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "heavy"])
def test_fixed_positive_needs_positive_weight(bad):
    with pytest.raises(ConfigError, match="weighting.positive_weight"):
        FixedPositive(bad)


@pytest.mark.parametrize("cls", list(WEIGHTINGS.values()))
@pytest.mark.parametrize("y", [np.zeros(5), np.ones(5)])
def test_single_class_is_refused(cls, y):
    with pytest.raises(UserError, match="training window has no (positive|negative) labels"):
        cls().weights(y)


@pytest.mark.parametrize("cls", list(WEIGHTINGS.values()))
def test_weights_accept_bool_labels_and_describe(cls):
    w = cls(positive_weight=5).weights(np.array([False, True, False]))
    assert w is None or (w.shape == (3,) and w.dtype == np.float64)
    assert isinstance(cls(positive_weight=5).describe(), str)


# ----------------------------------------------------------------------------- config files
def compose_group(compose_cfg, group: str, option: str):
    """Select ``group=option`` whether or not the root config already lists the group."""
    try:
        return compose_cfg([f"{group}={option}"])
    except ConfigCompositionException:
        return compose_cfg([f"+{group}={option}"])


@pytest.mark.parametrize("option", sorted(CLASSIFIERS))
def test_model_yaml_builds_and_matches_class_defaults(compose_cfg, option):
    cfg = compose_group(compose_cfg, "model", option)
    model = build(cfg.model, "model", seed=11)
    assert type(model) is CLASSIFIERS[option] and model.seed == 11
    cls = CLASSIFIERS[option]
    assert OmegaConf.to_container(cfg.model.params) == cls.default_params
    assert model.params == cls(params=None).params  # YAML and class defaults agree
    assert (cfg.model.early_stopping_rounds > 0) == cls.supports_early_stopping


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "weighting").glob("*.yaml")))
def test_weighting_yaml_builds(compose_cfg, option):
    cfg = compose_group(compose_cfg, "weighting", option)
    weighting = build(cfg.weighting, "weighting")
    assert isinstance(weighting, Weighting) and type(weighting) is WEIGHTINGS[option]
    assert weighting.weights(Y) is None or weighting.weights(Y).shape == Y.shape


def test_classes_in_registry_have_their_names():
    assert {cls.name for cls in CLASSIFIERS.values()} == set(CLASSIFIERS)
    assert HistGradientBoostingClassifier.library == "scikit-learn"


def test_registered_requirements_name_pyspark_only_for_mllib_bundles(tmp_path):
    """MLflow records what loading a bundle needs: pyspark only when its model is MLlib's."""
    from aml_pipeline.registry import _requirements

    assert not any(r.startswith("pyspark==") for r in _requirements(tmp_path))
    (tmp_path / "model.spark.zip").write_bytes(b"")
    assert any(r.startswith("pyspark==") for r in _requirements(tmp_path))
