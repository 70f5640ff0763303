"""The classifier contract every model of :mod:`.classifiers` and :mod:`aml_pipeline.spark.mllib` follows.

:class:`Classifier` holds the numpy API (fit, predict_proba, predict_one, contributions,
save/load) and its checks; the two modules build on it without importing each other.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.models.weighting import binary_labels

#: Keys every pipeline-owned setting is refused under, with the reason shown to the user.
WEIGHTING_HINT = "class weighting is chosen by the weighting group (weighting=inverse_frequency, ...)"
SEED_HINT = "the seed comes from the run's top-level `seed`"


# ----------------------------------------------------------------------------- input checks
def _as_matrix(X: Any, n_features: int | None = None) -> np.ndarray:
    """X as float64 2-D (no copy when it already is), with the expected column count."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-D (rows x features), got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"X has {arr.shape[1]} features, the model was trained on {n_features}")
    return arr


def _as_weights(sample_weight: Any, n_rows: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n_rows,):
        raise ValueError(f"sample_weight must have shape ({n_rows},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and >= 0")
    return w


def _feature_names(names: Any, n_features: int) -> list[str]:
    if names is None:
        return [f"f{i}" for i in range(n_features)]
    out = [str(n) for n in names]
    if len(out) != n_features:
        raise ValueError(f"{len(out)} feature names for {n_features} features")
    if len(set(out)) != len(out):
        raise ValueError("feature names must be unique")
    return out


def _check_rounds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"model.early_stopping_rounds={value!r} must be an integer >= 0 (0 turns early stopping off)")
    return int(value)


def refuse_reserved(params: dict[str, Any], reserved: dict[str, str]) -> None:
    for key in params:
        if key in reserved:
            raise ConfigError(f"model.params.{key} cannot be set: {reserved[key]}")


# ----------------------------------------------------------------------------- base class
class Classifier(ABC):
    """A fitted-or-not binary classifier with the pipeline's numpy API (see module doc)."""

    #: Registry key, written to the bundle as ``meta["class"]``.
    name: ClassVar[str]
    library: ClassVar[str]
    library_version: ClassVar[str]
    #: File the model is written to inside the bundle folder.
    model_file: ClassVar[str]
    #: Defaults merged under the user's params; mirrored in conf/model/<name>.yaml.
    default_params: ClassVar[dict[str, Any]]
    #: Whether ``early_stopping_rounds`` and the validation set are used.
    supports_early_stopping: ClassVar[bool] = False
    #: The engine this classifier must train on, as its ``_target_`` (None: the configured
    #: ``engine``); :func:`aml_pipeline.engines.trainer_of` honours it.
    engine: ClassVar[str | None] = None

    def __init__(self, early_stopping_rounds: int = 50, params: dict | None = None, seed: int = 42) -> None:
        self.early_stopping_rounds = _check_rounds(early_stopping_rounds)
        self.seed = int(seed)
        self.params: dict[str, Any] = self._resolve_params(dict(params or {}))
        self.feature_names: list[str] | None = None
        self.best_iteration: int | None = None
        self._model: Any = None

    # -- configuration
    @abstractmethod
    def _resolve_params(self, user: dict[str, Any]) -> dict[str, Any]:
        """Check user keys (ConfigError naming ``model.params.<key>``) and merge over defaults."""

    # -- training
    def fit(self, X, y, sample_weight=None, X_valid=None, y_valid=None, feature_names=None) -> "Classifier":
        """Train on (X, y); the validation set is only used for early stopping."""
        X = _as_matrix(X)
        labels = binary_labels(y, "training window")
        if labels.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {labels.shape[0]}")
        weights = _as_weights(sample_weight, X.shape[0])
        valid = self._validation_set(X_valid, y_valid, X.shape[1])
        self.feature_names = _feature_names(feature_names, X.shape[1])
        self.best_iteration = None
        self._fit(X, labels, weights, valid)
        return self

    def _validation_set(self, X_valid, y_valid, n_features: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The validation set when early stopping will use it, else None (silently ignored)."""
        if not self.supports_early_stopping or self.early_stopping_rounds == 0 or X_valid is None:
            return None
        if y_valid is None:
            raise ValueError("X_valid given without y_valid")
        Xv = _as_matrix(X_valid, n_features)
        try:
            yv = binary_labels(y_valid, "validation window")
        except UserError as exc:
            raise UserError(f"{exc}; early stopping on average precision needs both classes "
                            "(or set model.early_stopping_rounds=0)") from None
        if yv.shape[0] != Xv.shape[0]:
            raise ValueError(f"X_valid has {Xv.shape[0]} rows but y_valid has {yv.shape[0]}")
        return Xv, yv

    @abstractmethod
    def _fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None,
             valid: tuple[np.ndarray, np.ndarray] | None) -> None: ...

    # -- scoring
    def _checked(self, X: Any) -> np.ndarray:
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return _as_matrix(X, len(self.feature_names))

    def predict_proba(self, X) -> np.ndarray:
        """P(label=1) per row, 1-D float64; deterministic (row results never depend on batching)."""
        return np.ascontiguousarray(self._predict(self._checked(X)), dtype=np.float64)

    def predict_one(self, x: np.ndarray) -> float:
        """P(label=1) of one feature vector, the low-latency path for online scoring.

        Equal to ``predict_proba`` of the same row. sklearn models run their normal 2-D
        path here; they may start OpenMP/BLAS threads, so a scoring service should cap
        thread pools (``threadpoolctl.threadpool_limits(1)``) around its request loop.
        """
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        row = np.asarray(x, dtype=np.float64).reshape(1, -1)
        if row.shape[1] != len(self.feature_names):
            raise ValueError(f"x has {row.shape[1]} features, the model was trained on {len(self.feature_names)}")
        return float(self._predict_one(row))

    @abstractmethod
    def _predict(self, X: np.ndarray) -> np.ndarray: ...

    def _predict_one(self, row: np.ndarray) -> float:
        return self._predict(row)[0]

    def contributions(self, X) -> np.ndarray | None:
        """(n, n_features) per-row feature contributions in log-odds, or None if not available."""
        return None

    @abstractmethod
    def feature_importance(self) -> dict[str, float]:
        """Global importance per feature name ({} when the model has no honest cheap measure)."""

    # -- persistence
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the model into ``directory`` and return JSON-serialisable metadata for load."""
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_model(directory / self.model_file)
        return {
            "class": self.name,
            "class_name": type(self).__name__,
            "file": self.model_file,
            "library": self.library,
            "library_version": self.library_version,
            "feature_names": list(self.feature_names),
            "best_iteration": self.best_iteration,
            "early_stopping_rounds": self.early_stopping_rounds,
            "seed": self.seed,
            "params": dict(self.params),
        }

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "Classifier":
        """Restore a model written by :meth:`save` (params are not re-validated: they trained)."""
        if meta.get("class") != cls.name:
            raise ValueError(f"bundle holds a {meta.get('class')!r} model, not {cls.name!r}")
        if meta.get("file", cls.model_file) != cls.model_file:
            raise ValueError(f"{cls.name} models are stored as {cls.model_file}, not {meta.get('file')!r}")
        if meta.get("library_version") != cls.library_version:
            warnings.warn(f"model saved with {cls.library} {meta.get('library_version')}, loading with "
                          f"{cls.library_version}; scores may differ slightly", stacklevel=2)
        obj = cls.__new__(cls)
        obj.early_stopping_rounds = int(meta.get("early_stopping_rounds", 0))
        obj.seed = int(meta.get("seed", 42))
        obj.params = dict(meta.get("params", {}))
        obj.feature_names = [str(n) for n in meta["feature_names"]]
        obj.best_iteration = meta.get("best_iteration")
        obj._model = obj._load_model(Path(directory) / cls.model_file)
        return obj

    @abstractmethod
    def _save_model(self, path: Path) -> None: ...

    @abstractmethod
    def _load_model(self, path: Path) -> Any: ...

    def __repr__(self) -> str:
        fields = ("early_stopping_rounds", "params", "seed")
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k, None)!r}' for k in fields)})"
