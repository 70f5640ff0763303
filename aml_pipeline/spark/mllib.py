"""Spark MLlib classifiers (``model=spark_gbt | spark_lr | spark_rf``): train where the data is.

The classifiers of :mod:`aml_pipeline.models.classifiers` train on a numpy matrix on the driver; these train
on a Spark DataFrame of the feature table (``task=train`` reads ``features.parquet`` with
Spark and never collects it, see :mod:`aml_pipeline.spark.train`). They keep the
pipeline's :class:`~aml_pipeline.models.base.Classifier` API so the bundle, evaluation, thresholds
and the MLflow registry treat them like any other model:

* ``fit_frame(train, valid, feature_names, class_weights)``: the distributed fit. Sample
  weights are ``weightCol``: one weight per class from the weighting strategy
  (:meth:`~aml_pipeline.models.weighting.Weighting.class_weights`), counted in Spark.
* ``predict_frame(frame)``: a ``score`` column, computed by Spark (batch scoring).
* ``predict_proba(X)``: the numpy API; the rows go to Spark and back (fine for the
  validation/test windows and small files, not for a per-transaction service).

Features: MLlib has no missing values, so null, NaN and ±inf become the training window's
median of the column (approximate quantile, relative error 1e-3; 0 for an all-missing
column). The medians are part of the model's metadata, applied identically when scoring.

Parameters are MLlib's own names (``maxIter``, ``maxDepth`` ...), checked against the
estimator's ``Param`` list and type converters when the config is built (no JVM needed):
a misspelt key fails naming ``model.params.<key>`` and the allowed names.

Early stopping: GBT only, through MLlib's ``validationIndicatorCol`` on the validation
window; MLlib stops at the first iteration whose validation log-loss improves by less than
``validationTol`` (it has no patience count), so any ``early_stopping_rounds > 0`` turns
it on and 0 turns it off. LR and RF train to completion.

Saved form: the fitted Spark ``PipelineModel`` (VectorAssembler + the MLlib model), zipped
into one bundle file (``model.spark.zip``) so the bundle hash covers it like any other file.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import uuid
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aml_pipeline.errors import ConfigError
from aml_pipeline.models.base import SEED_HINT, WEIGHTING_HINT, Classifier, refuse_reserved
from aml_pipeline.optional import require_extra
from aml_pipeline.spark.session import get_session

SCORE = "score"
_ROW = "_row"
_LABEL = "_label"
_WEIGHT = "_weight"
_VALID = "_is_valid"
_FEATURES = "_features"
_PIPELINE_HINT = "set by the pipeline"
#: What needs pyspark here, in the one line that names the extra when it is missing.
_WHY = "an MLlib model (model=spark_*)"


def _pyspark_version() -> str:
    try:
        return metadata.version("pyspark")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _pyspark():
    """pyspark, with the ML and SQL modules the classifiers use, imported here only: a bundle
    holding an MLlib model loads without pyspark (:func:`~aml_pipeline.models.classifiers.load_classifier`),
    and whatever needs Spark checks the spark extra first (one line naming the pip command)."""
    require_extra("spark", why=_WHY)
    import pyspark.ml.classification
    import pyspark.ml.feature
    import pyspark.ml.functions
    import pyspark.ml.param
    import pyspark.sql.functions

    return pyspark


def _active_spark():
    """The running SparkSession, or a local one (scoring a small matrix outside a Spark task)."""
    spark = _pyspark().sql.SparkSession.getActiveSession()
    if spark is None:
        spark = get_session({"master": "local[2]", "shuffle_partitions": 2})
    return spark


def input_name(i: int) -> str:
    """Spark-safe column name of feature ``i`` inside the model (feature names may hold dots)."""
    return f"_x{i}"


class MLlibClassifier(Classifier):
    """Shared plumbing of the MLlib classifiers (see module doc)."""

    library = "pyspark.ml"
    library_version = _pyspark_version()
    model_file = "model.spark.zip"
    #: MLlib trains on the feature table in Spark, whatever ``engine`` says.
    engine: ClassVar[str | None] = "aml_pipeline.spark.engine.SparkEngine"
    #: Class name in ``pyspark.ml.classification``.
    estimator: ClassVar[str]
    _reserved: ClassVar[dict[str, str]] = {
        "featuresCol": _PIPELINE_HINT, "labelCol": _PIPELINE_HINT, "predictionCol": _PIPELINE_HINT,
        "probabilityCol": _PIPELINE_HINT, "rawPredictionCol": _PIPELINE_HINT, "leafCol": _PIPELINE_HINT,
        "weightCol": WEIGHTING_HINT, "seed": SEED_HINT,
        "thresholds": "alert thresholds are chosen per jurisdiction on the validation window (conf/thresholds)",
        "threshold": "alert thresholds are chosen per jurisdiction on the validation window (conf/thresholds)",
        "validationIndicatorCol": "early stopping uses the validation window; set model.early_stopping_rounds",
        "family": "the objective is fixed to binary",
    }

    def __init__(self, early_stopping_rounds: int = 0, params: dict | None = None, seed: int = 42) -> None:
        super().__init__(early_stopping_rounds, params, seed)
        self.medians: list[float] | None = None
        self._zip: Path | None = None

    # -- configuration ----------------------------------------------------------------------
    @classmethod
    def estimator_class(cls):
        return getattr(_pyspark().ml.classification, cls.estimator)

    @classmethod
    def estimator_params(cls) -> dict[str, Any]:
        """name -> ``Param`` of the estimator, read from the class (no JVM is started)."""
        Param = _pyspark().ml.param.Param
        est = cls.estimator_class()
        return {n: getattr(est, n) for n in dir(est) if isinstance(getattr(est, n, None), Param)}

    def _resolve_params(self, user: dict[str, Any]) -> dict[str, Any]:
        refuse_reserved(user, self._reserved)
        params = self.estimator_params()
        allowed = sorted(set(params) - set(self._reserved))
        for key in user:
            if key not in allowed:
                raise ConfigError(f"model.params.{key} is not an MLlib {self.estimator} parameter; "
                                  f"allowed: {', '.join(allowed)}")
        merged = {**self.default_params, **user}
        for key, value in merged.items():
            try:
                params[key].typeConverter(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"model.params.{key}={value!r}: {exc} ({params[key].doc})") from None
        return merged

    def _estimator_args(self, validation: bool) -> dict[str, Any]:
        args = {**self.params, "featuresCol": _FEATURES, "labelCol": _LABEL, "probabilityCol": "_probability",
                "rawPredictionCol": "_raw", "predictionCol": "_prediction"}
        if "seed" in self.estimator_params():
            args["seed"] = self.seed
        return args

    # -- training on Spark --------------------------------------------------------------------
    def _inputs(self, frame, feature_names: list[str]):
        """Feature columns renamed ``_x<i>``, null/NaN/±inf as the training medians."""
        F = _pyspark().sql.functions
        cols = {}
        for i, name in enumerate(feature_names):
            x = F.col(f"`{name}`").cast("double")
            bad = x.isNull() | F.isnan(x) | (F.abs(x) == F.lit(float("inf")))
            cols[input_name(i)] = F.when(bad, F.lit(self.medians[i])).otherwise(x)
        return frame.withColumns(cols)

    def _fit_medians(self, train, feature_names: list[str]) -> list[float]:
        F = _pyspark().sql.functions
        cols = []
        for i, name in enumerate(feature_names):
            x = F.col(f"`{name}`").cast("double")
            cols.append(F.when(x.isNull() | F.isnan(x) | (F.abs(x) == F.lit(float("inf"))), None).otherwise(x).alias(input_name(i)))
        clean = train.select(*cols)
        found = clean.approxQuantile([input_name(i) for i in range(len(feature_names))], [0.5], 1e-3)
        return [float(q[0]) if q else 0.0 for q in found]

    def fit_frame(self, train, valid, feature_names: list[str], class_weights: tuple[float, float] | None,
                  label: str = "label", scratch: str | None = None) -> "MLlibClassifier":
        """Train on Spark rows ``train`` (``valid``: early stopping, GBT); nothing is collected."""
        pyspark = _pyspark()
        F = pyspark.sql.functions
        self.feature_names = [str(n) for n in feature_names]
        self.best_iteration = None
        self.medians = self._fit_medians(train, self.feature_names)
        use_valid = self.supports_early_stopping and self.early_stopping_rounds > 0 and valid is not None
        rows = train.withColumn(_VALID, F.lit(False))
        if use_valid:
            rows = rows.unionByName(valid.withColumn(_VALID, F.lit(True)))
        rows = self._inputs(rows, self.feature_names).withColumn(_LABEL, F.col(label).cast("double"))
        args = self._estimator_args(use_valid)
        if class_weights is not None:
            w0, w1 = class_weights
            rows = rows.withColumn(_WEIGHT, F.when(F.col(_LABEL) == 1.0, F.lit(w1)).otherwise(F.lit(w0)))
            args["weightCol"] = _WEIGHT
        if use_valid:
            args["validationIndicatorCol"] = _VALID
        inputs = [input_name(i) for i in range(len(self.feature_names))]
        rows = rows.select(*inputs, _LABEL, _VALID, *([_WEIGHT] if class_weights is not None else []))
        estimator = self.estimator_class()()
        for key, value in args.items():  # not every Param is a constructor argument (probabilityCol of GBT)
            estimator.set(estimator.getParam(key), value)
        pipeline = pyspark.ml.Pipeline(stages=[
            pyspark.ml.feature.VectorAssembler(inputCols=inputs, outputCol=_FEATURES, handleInvalid="error"), estimator])
        fitted = pipeline.fit(rows)
        self.best_iteration = self._iterations(fitted.stages[-1]) if use_valid else None
        self._set_model(fitted, scratch)
        return self

    def _iterations(self, model) -> int | None:
        return None

    def _set_model(self, fitted, scratch: str | None) -> None:
        """Keep the fitted PipelineModel, and its zipped saved form (what the bundle stores)."""
        self._model = fitted
        root = Path(scratch) if scratch else Path(tempfile.gettempdir())
        folder = root / f"mllib-{uuid.uuid4().hex[:8]}"
        fitted.write().overwrite().save(str(folder))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(folder.rglob("*")):
                if p.is_file() and not p.name.endswith(".crc"):
                    info = zipfile.ZipInfo(str(p.relative_to(folder)), date_time=(1980, 1, 1, 0, 0, 0))
                    z.writestr(info, p.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)
        self._zipped = buf.getvalue()

    # -- numpy API (Classifier) -------------------------------------------------------------------
    def _fit(self, X, y, w, valid) -> None:
        """The numpy API: the matrix goes to Spark (for small data and tests)."""
        spark = _active_spark()
        train = self._frame(spark, X, {"label": y.astype(np.int64), **({"_w": w} if w is not None else {})})
        valid_frame = None
        if valid is not None:
            valid_frame = self._frame(spark, valid[0], {"label": valid[1].astype(np.int64)})
        pair = None
        if w is not None:  # per-class weights (the strategies weigh by label only)
            pair = (float(w[y == 0][0]), float(w[y == 1][0]))
        names = list(self.feature_names)
        self.feature_names = None
        self.fit_frame(train, valid_frame, names, pair)

    def _frame(self, spark, X: np.ndarray, extra: dict[str, np.ndarray]):
        import pandas as pd

        names = self.feature_names
        data = {name: X[:, i] for i, name in enumerate(names)}
        data.update(extra)
        data[_ROW] = np.arange(X.shape[0], dtype=np.int64)
        return spark.createDataFrame(pd.DataFrame(data))

    def predict_frame(self, frame, out: str = SCORE):
        """``frame`` with a ``score`` column (P(label=1)), computed by Spark."""
        pyspark = _pyspark()
        model = self._pipeline()
        keep = frame.columns
        scored = model.transform(self._inputs(frame, self.feature_names))
        probability = pyspark.ml.functions.vector_to_array(pyspark.sql.functions.col("_probability"))
        return scored.withColumn(out, probability[1]).select(*keep, out)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        if X.shape[0] == 0:
            return np.zeros(0)
        spark = _active_spark()
        scored = self.predict_frame(self._frame(spark, X, {})).select(_ROW, SCORE).toPandas()
        return scored.sort_values(_ROW)[SCORE].to_numpy(dtype=np.float64)

    def _pipeline(self):
        if isinstance(self._model, _Lazy):
            self._model = self._restore(self._zip)
        return self._model

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        meta = super().save(directory)
        meta["medians"] = list(self.medians)
        return meta

    def _save_model(self, path: Path) -> None:
        path.write_bytes(self._zipped)

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "MLlibClassifier":
        obj = super().load(directory, meta)
        obj.medians = [float(m) for m in meta["medians"]]
        return obj

    def _load_model(self, path: Path) -> Any:
        # Loaded lazily (needs a SparkSession): remember the verified zip and its bytes.
        self._zip = path
        self._zipped = path.read_bytes()
        return _Lazy()

    def _restore(self, path: Path):
        """Unzip beside the bundle folder (Spark reads the parts with its own file system) and load."""
        PipelineModel = _pyspark().ml.PipelineModel
        _active_spark()
        folder = Path(tempfile.mkdtemp(prefix="mllib-", dir=path.parent.parent))
        try:
            with zipfile.ZipFile(io.BytesIO(self._zipped)) as z:
                z.extractall(folder)
            return PipelineModel.load(str(folder))  # reads every part eagerly
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _checked(self, X: Any) -> np.ndarray:
        if self._model is not None:
            self._pipeline()
        return super()._checked(X)

    def predict_one(self, x: np.ndarray) -> float:
        return float(self.predict_proba(np.asarray(x, dtype=np.float64).reshape(1, -1))[0])

    def _stage(self):
        self._checked(np.zeros((0, len(self.feature_names))))
        return self._model.stages[-1]


class _Lazy:
    """Placeholder for a saved PipelineModel not loaded yet (``Classifier`` checks ``_model``)."""


class SparkGBTClassifier(MLlibClassifier):
    """MLlib ``GBTClassifier`` (logistic loss), early-stopped on the validation window."""

    name = "spark_gbt"
    estimator = "GBTClassifier"
    supports_early_stopping = True
    default_params = {"maxIter": 100, "maxDepth": 5, "stepSize": 0.1, "maxBins": 32, "subsamplingRate": 1.0,
                      "checkpointInterval": 10, "validationTol": 0.0}

    def _iterations(self, model) -> int:
        return int(model.getNumTrees)

    def feature_importance(self) -> dict[str, float]:
        """MLlib's ``featureImportances`` (gain-based, normalised to sum 1)."""
        imp = self._stage().featureImportances.toArray()
        return {n: float(v) for n, v in zip(self.feature_names, imp)}


class SparkRandomForestClassifier(SparkGBTClassifier):
    """MLlib ``RandomForestClassifier``; trains all trees (no early stopping)."""

    name = "spark_rf"
    estimator = "RandomForestClassifier"
    supports_early_stopping = False
    default_params = {"numTrees": 100, "maxDepth": 8, "minInstancesPerNode": 5, "featureSubsetStrategy": "sqrt",
                      "subsamplingRate": 1.0, "maxBins": 32, "checkpointInterval": 10}


class SparkLogisticRegression(MLlibClassifier):
    """MLlib ``LogisticRegression`` (binomial; standardises internally, coefficients on the original scale)."""

    name = "spark_lr"
    estimator = "LogisticRegression"
    default_params = {"maxIter": 100, "regParam": 0.0, "elasticNetParam": 0.0, "standardization": True, "tol": 1e-6}

    def _estimator_args(self, validation: bool) -> dict[str, Any]:
        return {**super()._estimator_args(validation), "family": "binomial"}

    def contributions(self, X) -> np.ndarray:
        """coef x (median-imputed) value, in log-odds; row sums + intercept = the margin."""
        X = self._checked(X)
        med = np.asarray(self.medians, dtype=np.float64)
        Z = np.where(np.isfinite(X), X, med)
        return Z * self._stage().coefficients.toArray()

    def feature_importance(self) -> dict[str, float]:
        """|coef| (on the original feature scale)."""
        return {n: float(abs(c)) for n, c in zip(self.feature_names, self._stage().coefficients.toArray())}


MLLIB_CLASSIFIERS = {cls.name: cls for cls in (SparkGBTClassifier, SparkLogisticRegression, SparkRandomForestClassifier)}

__all__ = ["MLLIB_CLASSIFIERS", "MLlibClassifier", "SparkGBTClassifier", "SparkLogisticRegression",
           "SparkRandomForestClassifier"]
