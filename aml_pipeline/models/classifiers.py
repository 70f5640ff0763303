"""Binary classifiers behind one small numpy API, chosen by ``conf/model/<option>.yaml``.

Every classifier is built as ``Cls(early_stopping_rounds=50, params=None, seed=42)``; the
constructor only merges ``params`` over defaults tuned for rare positives and checks the
keys (a misspelt hyper-parameter fails at build time, naming ``model.params.<key>``, not
silently after an hour of training). Then:

* ``fit(X, y, sample_weight, X_valid, y_valid, feature_names)``: X float64 2-D, NaN = missing.
* ``predict_proba(X)`` -> 1-D P(label=1); ``predict_one(x)`` for online scoring.
* ``contributions(X)`` -> (n, n_features) per-row attributions in log-odds, or ``None``
  when the model has no cheap exact local attribution (HGB, RF): callers fall back to
  ``feature_importance()``.
* ``save(dir) -> meta`` / ``load_classifier(dir, meta)``: LightGBM as a plain Booster text
  file, sklearn models via skops (never pickle); loading picks the class from
  :data:`CLASSIFIERS` only and gives bit-identical scores.

Early stopping monitors validation average precision (PR-AUC), the metric the pipeline
ranks models by; it is used by LightGBM (native) and HGB (warm-start loop, see
:class:`HistGradientBoostingClassifier`). LR and RF train to completion.
"""

from __future__ import annotations

import difflib
import importlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import sklearn
import skops.io as sio
from joblib import effective_n_jobs
from sklearn import ensemble
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.models.base import SEED_HINT, WEIGHTING_HINT, Classifier, refuse_reserved
from aml_pipeline.models.lightgbm_row import single_row_predictor

# ----------------------------------------------------------------------------- LightGBM
def _lightgbm_aliases() -> dict[str, str] | None:
    """alias -> main name for every LightGBM parameter, or None if the library hides them.

    ``_ConfigAliases`` is private; if it moves we skip the key check and LightGBM itself
    warns about unknown parameters at train time.
    """
    try:
        from lightgbm.basic import _ConfigAliases

        _ConfigAliases.get("seed")  # loads the table from the C library
        table = _ConfigAliases.aliases
    except Exception:  # pragma: no cover - depends on LightGBM internals
        return None
    return {alias: main for main, aliases in table.items() for alias in aliases}


def _safe_lightgbm_names(names: list[str]) -> list[str] | str:
    """LightGBM rejects JSON punctuation and rewrites spaces in names: fall back to Column_i.

    The real names are kept in the bundle metadata either way.
    """
    ok = all(re.fullmatch(r"[A-Za-z0-9_.\-]+", n) for n in names)
    return names if ok else "auto"


class LightGBMClassifier(Classifier):
    """Gradient-boosted trees via ``lightgbm.train`` (a plain Booster, saved as text).

    Parameters are LightGBM's own (any documented name or alias, e.g. ``n_estimators`` or
    ``num_iterations``); they are stored under LightGBM's main names so two spellings of
    one parameter are caught. Early stopping watches validation ``average_precision``.
    The in-memory booster is rebuilt from its own text dump after training, so the model
    that scores in this process is byte-for-byte the one written to ``model.txt``.
    """

    name = "lightgbm"
    library = "lightgbm"
    library_version = lgb.__version__
    model_file = "model.txt"
    supports_early_stopping = True
    default_params = {
        "n_estimators": 500,
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_child_samples": 20,
        "feature_fraction": 1.0,
        "lambda_l2": 0.0,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 0,
        "verbosity": -1,
    }
    _reserved = {
        "objective": "the objective is fixed to binary",
        "num_class": "the objective is fixed to binary",
        "metric": "early stopping monitors average_precision",
        "seed": SEED_HINT,
        "early_stopping_round": "use model.early_stopping_rounds",
        "is_unbalance": WEIGHTING_HINT,
        "scale_pos_weight": WEIGHTING_HINT,
    }
    _wrapper_only = {
        "class_weight": WEIGHTING_HINT,
        "importance_type": "feature_importance() always reports gain",
    }

    def _resolve_params(self, user: dict[str, Any]) -> dict[str, Any]:
        aliases = _lightgbm_aliases()
        if aliases is None:
            return {**self.default_params, **user}
        merged = {aliases.get(k, k): v for k, v in self.default_params.items()}
        seen: dict[str, str] = {}
        for key, value in user.items():
            main = self._main_name(key, aliases)
            if main in seen:
                raise ConfigError(f"model.params.{seen[main]} and model.params.{key} are the same LightGBM "
                                  f"parameter ({main}); set only one")
            seen[main] = key
            merged[main] = value
        return merged

    def _main_name(self, key: str, aliases: dict[str, str]) -> str:
        if key in self._wrapper_only:
            raise ConfigError(f"model.params.{key} cannot be set: {self._wrapper_only[key]}")
        if key not in aliases:
            close = difflib.get_close_matches(key, list(aliases), n=3, cutoff=0.75)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"model.params.{key} is not a LightGBM parameter{hint}; allowed: any name "
                              "at https://lightgbm.readthedocs.io/en/stable/Parameters.html")
        main = aliases[key]
        if main in self._reserved:
            raise ConfigError(f"model.params.{key} cannot be set: {self._reserved[main]}")
        return main

    def _train_params(self) -> dict[str, Any]:
        params = {k: v for k, v in self.params.items() if k not in ("num_iterations", "n_estimators")}
        return {**params, "objective": "binary", "metric": "average_precision", "seed": self.seed}

    def _num_rounds(self) -> int:
        return int(self.params.get("num_iterations", self.params.get("n_estimators", 100)))

    def _fit(self, X, y, w, valid) -> None:
        params = self._train_params()
        train = lgb.Dataset(X, label=y, weight=w, feature_name=_safe_lightgbm_names(self.feature_names),
                            params=params, free_raw_data=True)
        valid_sets, callbacks = [], []
        if valid is not None:
            valid_sets = [train.create_valid(valid[0], label=valid[1])]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False)]
        booster = lgb.train(params, train, num_boost_round=self._num_rounds(), valid_sets=valid_sets,
                            valid_names=["valid"] * len(valid_sets), callbacks=callbacks)
        if valid is not None and booster.best_iteration > 0:
            self.best_iteration = int(booster.best_iteration)
        # keep only the trees that score (best_iteration) and make memory == file
        self._model = lgb.Booster(model_str=booster.model_to_string(num_iteration=self.best_iteration or -1))

    def _threads(self) -> int:
        aliases = _lightgbm_aliases() or {}
        for key, value in self.params.items():
            if aliases.get(key, key) == "num_threads":
                return int(value)
        return 0

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self._model.predict(X, num_threads=self._threads())

    def __getstate__(self) -> dict[str, Any]:
        # the single-row path holds C handles: a copy sets up its own on first use
        return {k: v for k, v in self.__dict__.items() if k != "_row_predictor"}

    def _predict_one(self, row: np.ndarray) -> float:
        # the C library's single-row path, set up once per Booster (lightgbm_row: same score, half the CPU)
        fast = self.__dict__.get("_row_predictor")
        if fast is None or fast[0] is not self._model:
            fast = self._row_predictor = (self._model, single_row_predictor(self._model))
        if fast[1] is None:
            return self._model.predict(row, num_threads=1)[0]
        return fast[1](row)

    def raw_score(self, X) -> np.ndarray:
        """Log-odds per row (what the contributions plus bias add up to)."""
        return self._model.predict(self._checked(X), raw_score=True, num_threads=self._threads())

    def contributions(self, X) -> np.ndarray:
        """TreeSHAP values (``pred_contrib=True``) in log-odds, bias column dropped.

        ``contributions(X).sum(1) + bias == raw_score(X)``; the bias is the same for every row.
        """
        contrib = self._model.predict(self._checked(X), pred_contrib=True, num_threads=self._threads())
        return np.ascontiguousarray(contrib[:, :-1])

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature (LightGBM ``importance_type="gain"``)."""
        gain = self._model.feature_importance(importance_type="gain")
        return {n: float(g) for n, g in zip(self.feature_names, gain)}

    def _save_model(self, path: Path) -> None:
        self._model.save_model(str(path))

    def _load_model(self, path: Path) -> lgb.Booster:
        return lgb.Booster(model_file=str(path))


# ----------------------------------------------------------------------------- sklearn
#: Only these module prefixes may be instantiated when a skops file is loaded.
_SKOPS_ALLOWED_PREFIXES = ("sklearn.", "numpy.")


def _skops_load(path: Path, expected: type) -> Any:
    """Load a skops file trusting only sklearn/numpy types, and check what came out.

    skops lists the types it does not trust by default; we trust exactly those, provided
    all come from sklearn or numpy. Anything else (a function from ``os``, a class from
    some other package) means the file was not written by this pipeline: refuse it.
    """
    untrusted = sio.get_untrusted_types(file=path)
    foreign = [t for t in untrusted if not t.startswith(_SKOPS_ALLOWED_PREFIXES)]
    if foreign:
        raise ValueError(f"{path} contains types outside sklearn/numpy ({', '.join(sorted(foreign))}); "
                         "refusing to load it")
    model = sio.load(path, trusted=untrusted)
    if not isinstance(model, expected):
        raise ValueError(f"{path} holds a {type(model).__name__}, expected {expected.__name__}")
    return model


_PARAM_IN_MESSAGE = re.compile(r"The '(\w+)' parameter")


class _SklearnClassifier(Classifier):
    """Shared plumbing: params checked against the estimator's own ``get_params()``."""

    library = "scikit-learn"
    library_version = sklearn.__version__
    model_file = "model.skops"
    _estimator_cls: ClassVar[type]
    _reserved: ClassVar[dict[str, str]] = {"random_state": SEED_HINT, "class_weight": WEIGHTING_HINT}

    def _resolve_params(self, user: dict[str, Any]) -> dict[str, Any]:
        refuse_reserved(user, self._reserved)
        allowed = sorted(set(self._estimator_cls().get_params(deep=False)) - set(self._reserved))
        for key in user:
            if key not in allowed:
                raise ConfigError(f"model.params.{key} is not a {self._estimator_cls.__name__} parameter; "
                                  f"allowed: {', '.join(allowed)}")
        merged = {**self.default_params, **user}
        self._validate_values(merged)
        return merged

    def _validate_values(self, params: dict[str, Any]) -> None:
        """Run sklearn's own type/range checks now, so bad values fail before training."""
        est = self._estimator_cls(**params)
        check = getattr(est, "_validate_params", None)  # private, present since sklearn 1.2
        if check is None:  # pragma: no cover
            return
        try:
            check()
        except (ValueError, TypeError) as exc:
            match = _PARAM_IN_MESSAGE.search(str(exc))
            key = f"model.params.{match.group(1)}" if match else "model.params"
            raise ConfigError(f"{key}: {exc}") from None

    def _positive_column(self, est: Any) -> int:
        return int(np.flatnonzero(est.classes_ == 1)[0])

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self._model.predict_proba(X)[:, self._positive_column(self._model)]

    def _save_model(self, path: Path) -> None:
        sio.dump(self._model, path)

    def _load_model(self, path: Path) -> Any:
        return _skops_load(path, self._model_type())

    def _model_type(self) -> type:
        return self._estimator_cls


class HistGradientBoostingClassifier(_SklearnClassifier):
    """sklearn's histogram gradient boosting (NaN handled natively).

    Early stopping, honestly on the given validation set: sklearn's built-in
    ``early_stopping`` can only carve its own random split out of the training data, which
    would mix time windows. Instead we grow the model with ``warm_start`` in chunks of
    ``max(early_stopping_rounds, 10)`` iterations, score validation average precision at
    every iteration (``staged_decision_function``), and stop once the best iteration is
    ``early_stopping_rounds`` behind. As sklearn cannot drop trees, the final model is then
    refit from scratch with ``max_iter = best_iteration`` (same seed, same data), costing
    at most ``best_iteration`` extra trees. Without a validation set (or with rounds 0) it
    trains ``max_iter`` iterations.
    """

    name = "sklearn_hgb"
    _estimator_cls = ensemble.HistGradientBoostingClassifier
    supports_early_stopping = True
    default_params = {
        "max_iter": 500,
        "learning_rate": 0.05,
        "max_leaf_nodes": 31,
        "min_samples_leaf": 20,
        "l2_regularization": 0.0,
        "max_bins": 255,
    }
    _reserved = {
        **_SklearnClassifier._reserved,
        "early_stopping": "early stopping uses the validation window; set model.early_stopping_rounds",
        "n_iter_no_change": "use model.early_stopping_rounds",
        "validation_fraction": "early stopping uses the validation window, not a random split",
        "scoring": "early stopping monitors validation average precision",
        "tol": "only used by sklearn's internal early stopping, which is off",
        "warm_start": "managed by the early-stopping loop",
    }

    def _make(self, max_iter: int, warm_start: bool = False) -> ensemble.HistGradientBoostingClassifier:
        params = {**self.params, "max_iter": max_iter}
        return self._estimator_cls(**params, early_stopping=False, warm_start=warm_start, random_state=self.seed)

    def _fit(self, X, y, w, valid) -> None:
        if valid is None:
            self._model = self._make(int(self.params["max_iter"])).fit(X, y, sample_weight=w)
            return
        best = self._search_best_iteration(X, y, w, *valid)
        self._model = self._make(best).fit(X, y, sample_weight=w)
        self.best_iteration = best

    def _search_best_iteration(self, X, y, w, X_valid, y_valid) -> int:
        """Warm-start loop: the 1-based iteration with the highest validation AP."""
        max_iter, rounds = int(self.params["max_iter"]), self.early_stopping_rounds
        step = max(rounds, 10)
        est = self._make(min(step, max_iter), warm_start=True)
        scores: list[float] = []
        while True:
            est.fit(X, y, sample_weight=w)
            scores = self._stage_scores(est, X_valid, y_valid, scores)
            best = int(np.argmax(scores)) + 1  # first maximum: ties are not an improvement
            stalled = est.n_iter_ < est.max_iter  # no split gained anything: sklearn stopped
            if est.n_iter_ >= max_iter or stalled or len(scores) - best >= rounds:
                return best
            est.set_params(max_iter=min(est.max_iter + step, max_iter))

    @staticmethod
    def _stage_scores(est, X_valid, y_valid, known: list[float]) -> list[float]:
        """Validation AP after every iteration, scoring only the iterations not yet known."""
        scores = list(known)
        for i, raw in enumerate(est.staged_decision_function(X_valid)):
            if i >= len(known):
                scores.append(float(average_precision_score(y_valid, raw)))
        return scores

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature, read from the fitted trees (like LightGBM's gain).

        sklearn has no public importance for HGB; the per-node ``gain`` lives in the
        private ``_predictors``. If that layout changes we return {} rather than guess.
        """
        try:
            nodes = [p.nodes for per_iter in self._model._predictors for p in per_iter]
            splits = np.concatenate([n[n["is_leaf"] == 0] for n in nodes])
            totals = np.bincount(splits["feature_idx"].astype(np.intp), weights=splits["gain"],
                                 minlength=len(self.feature_names))
        except (AttributeError, KeyError, ValueError, IndexError, TypeError):
            return {}
        return {n: float(g) for n, g in zip(self.feature_names, totals)}


class LogisticRegressionClassifier(_SklearnClassifier):
    """Median imputation -> standardisation -> logistic regression: the linear baseline.

    ``params`` go to ``LogisticRegression``. Coefficients are on standardised features, so
    ``contributions`` (coef x standardised value, log-odds) and |coef| importances compare
    across features. All-NaN training columns are kept (imputed 0) so shapes stay fixed.
    """

    name = "sklearn_lr"
    _estimator_cls = LogisticRegression
    default_params = {"C": 1.0, "max_iter": 2000}

    def _model_type(self) -> type:
        return Pipeline

    def _fit(self, X, y, w, valid) -> None:
        pipe = Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(**self.params, random_state=self.seed)),
        ])
        self._model = pipe.fit(X, y, model__sample_weight=w)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        est = self._model[-1]
        return self._model.predict_proba(X)[:, self._positive_column(est)]

    def _sign(self) -> float:
        """coef_ is for classes_[1]; it is label 1 here (labels are 0/1), but be explicit."""
        return 1.0 if self._positive_column(self._model[-1]) == 1 else -1.0

    def contributions(self, X) -> np.ndarray:
        """coef x standardised (imputed) value; row sums + intercept = decision_function."""
        z = self._model[:-1].transform(self._checked(X))
        return z * (self._sign() * self._model[-1].coef_[0])

    def feature_importance(self) -> dict[str, float]:
        """|coef| on standardised features."""
        return {n: float(abs(c)) for n, c in zip(self.feature_names, self._model[-1].coef_[0])}


class RandomForestClassifier(_SklearnClassifier):
    """sklearn random forest (NaN handled natively since sklearn 1.4).

    ``n_jobs`` parallelises training. Prediction runs each tree in a fixed order per row
    (``n_jobs=1`` inside the estimator: sklearn's threaded prediction adds tree outputs in
    completion order, which can change the last bits) and parallelises over row chunks
    instead, so scores are deterministic and independent of batching.
    """

    name = "sklearn_rf"
    _estimator_cls = ensemble.RandomForestClassifier
    default_params = {"n_estimators": 300, "min_samples_leaf": 5, "max_features": "sqrt", "n_jobs": 2}
    #: Rows per thread below which splitting a batch costs more than it saves.
    _min_chunk = 20_000

    def _fit(self, X, y, w, valid) -> None:
        est = self._estimator_cls(**self.params, random_state=self.seed)
        est.fit(X, y, sample_weight=w)
        self._model = est.set_params(n_jobs=1)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        jobs = min(effective_n_jobs(self.params.get("n_jobs")), max(1, len(X) // self._min_chunk))
        if jobs <= 1:
            return super()._predict(X)
        chunks = np.array_split(X, jobs)
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # tree code releases the GIL
            return np.concatenate(list(pool.map(super()._predict, chunks)))

    def feature_importance(self) -> dict[str, float]:
        """Mean impurity decrease (``feature_importances_``; biased to high-cardinality features)."""
        return {n: float(v) for n, v in zip(self.feature_names, self._model.feature_importances_)}


# ----------------------------------------------------------------------------- registry
CLASSIFIERS: dict[str, type[Classifier]] = {
    cls.name: cls
    for cls in (LightGBMClassifier, HistGradientBoostingClassifier, LogisticRegressionClassifier,
                RandomForestClassifier)
}


#: Classifiers that an engine brings, by registry key -> (module, class): imported only when
#: a bundle names one, so this package never imports an engine (the Spark engine's MLlib
#: models, :mod:`aml_pipeline.spark.mllib`, whose own registry must match this one).
ENGINE_CLASSIFIERS: dict[str, tuple[str, str]] = {
    "spark_gbt": ("aml_pipeline.spark.mllib", "SparkGBTClassifier"),
    "spark_rf": ("aml_pipeline.spark.mllib", "SparkRandomForestClassifier"),
    "spark_lr": ("aml_pipeline.spark.mllib", "SparkLogisticRegression"),
}


def load_classifier(directory: Path, meta: dict[str, Any]) -> Classifier:
    """Restore a saved classifier, choosing its class from :data:`CLASSIFIERS` only.

    A bundle can name a class but never an import path, so a crafted ``meta`` cannot make
    us import or run anything outside this module (and the fixed :data:`ENGINE_CLASSIFIERS`).
    """
    name = meta.get("class")
    if not isinstance(name, str) or (name not in CLASSIFIERS and name not in ENGINE_CLASSIFIERS):
        raise UserError(f"the bundle's model class {name!r} is unknown to this version of aml_pipeline; "
                        f"known: {', '.join([*CLASSIFIERS, *ENGINE_CLASSIFIERS])}")
    if name in CLASSIFIERS:
        return CLASSIFIERS[name].load(Path(directory), meta)
    module, qualname = ENGINE_CLASSIFIERS[name]
    return getattr(importlib.import_module(module), qualname).load(Path(directory), meta)


__all__ = [
    "CLASSIFIERS",
    "ENGINE_CLASSIFIERS",
    "Classifier",
    "HistGradientBoostingClassifier",
    "LightGBMClassifier",
    "LogisticRegressionClassifier",
    "RandomForestClassifier",
    "load_classifier",
]
