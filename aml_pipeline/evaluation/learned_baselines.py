"""Learned baselines: what a plain gradient-boosted model gets without our feature plan.

A bank does not judge a monitoring model by its absolute PR-AUC (that moves with the
data's base rate and typology mix) but by what it adds over the model its own team would
train in an afternoon. So every evaluation trains two such models next to the configured
plan, on the same split, and reports the plan's PR-AUC as a multiple of theirs (the lift):

* ``raw`` — LightGBM on the raw canonical columns of each event alone: ``amount``, hour of
  day and weekday of ``event_time``, and categorical codes of ``channel, currency,
  src_country, dst_country, jurisdiction, src_bank, dst_bank, region`` where the source
  has them. Account ids are never used: they identify, they do not generalise, and a model
  that learns "A000386 is a launderer" has learnt the training labels, not laundering.
* ``raw_windows`` — ``raw`` plus per-account 24 h / 7 d counts and sums of money in and
  out, for the sender and the receiver. They come from the project's own ``rolling``
  feature step run through a one-step :class:`~aml_pipeline.features.plan.FeaturePlan`,
  so they follow the same-instant rule (only events strictly earlier than the event) and
  are exact, not an approximation a baseline could be blamed for.

Fairness rules, the same as the plan's (otherwise the lift would flatter one side):

* fitted on the ``train`` split only: the category codes and the trees; codes of values
  first seen later are missing (NaN), as an unseen category is to any model;
* the number of boosting rounds is chosen by early stopping on the ``valid`` split
  (validation average precision, the metric the plan stops on); test labels are never
  read while fitting, they only judge the scores afterwards;
* the run's class weighting (``weighting`` group) and, when the configured model is
  LightGBM, its parameters (``model.params``, ``model.early_stopping_rounds``, ``seed``):
  the lift then measures the features, not a tuning difference. For other models the
  LightGBM defaults of :class:`~aml_pipeline.models.classifiers.LightGBMClassifier` apply;
* the plan's reporting currency (``features.fx``): when the plan converts amounts, both
  baselines see the same converted ``amount`` (and window sums of it) as the plan's steps,
  so a baseline is not left adding yen to pounds while the plan compares like with like.

Everything here is a pure function of a frame of canonical events with a ``split`` column;
``task=evaluate`` does the reading and writing.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from aml_pipeline.config import option_value
from aml_pipeline.evaluation.metrics import pr_auc, recall_at_precision, roc_auc
from aml_pipeline.features.fx import FxTable
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.features.rolling import RollingAggregates
from aml_pipeline.models.classifiers import LightGBMClassifier, _safe_lightgbm_names
from aml_pipeline.models.weighting import Weighting

#: Raw categorical columns a baseline may use, where the source has them (never account ids).
RAW_CATEGORICAL = ("channel", "currency", "src_country", "dst_country", "jurisdiction", "src_bank", "dst_bank", "region")
#: Raw numeric columns computed from the event alone.
RAW_NUMERIC = ("amount", "hour", "weekday")
#: The learned baselines, in report order.
NAMES = ("raw", "raw_windows")
#: Early-stopping patience when the configured model has none (early stopping is what
#: picks a baseline's rounds on validation, so it is never off here).
DEFAULT_EARLY_STOPPING = 50
_LIGHTGBM_TARGET = f"{LightGBMClassifier.__module__}.{LightGBMClassifier.__name__}"


def window_step() -> RollingAggregates:
    """Per-account 24 h / 7 d in/out counts and sums, sender and receiver (16 columns)."""
    return RollingAggregates(windows=["24h", "7d"], sides=["src", "dst"], flows=["in", "out"], aggs=["count", "sum"])


@dataclass(frozen=True)
class BaselineModel:
    """The LightGBM settings every learned baseline trains with."""

    params: dict[str, Any] = field(default_factory=dict)
    early_stopping_rounds: int = DEFAULT_EARLY_STOPPING
    seed: int = 42

    @classmethod
    def from_config(cls, model_cfg: Any, seed: int = 42) -> "BaselineModel":
        """The configured model's params when it is LightGBM, else LightGBM's defaults."""
        get = model_cfg.get if hasattr(model_cfg, "get") else lambda k, d=None: getattr(model_cfg, k, d)
        if str(get("_target_", "")) != _LIGHTGBM_TARGET:
            return cls(seed=int(seed))
        params = get("params", None) or {}
        if hasattr(params, "items"):
            params = {str(k): v for k, v in params.items()}
        rounds = int(get("early_stopping_rounds", DEFAULT_EARLY_STOPPING) or DEFAULT_EARLY_STOPPING)
        return cls(params=dict(params), early_stopping_rounds=rounds, seed=int(get("seed", seed)))


# ----------------------------------------------------------------------------- columns
def raw_frame(events: pl.DataFrame) -> pl.DataFrame:
    """``event_id`` and the raw columns of each event alone (categoricals still as text)."""
    cats = [c for c in RAW_CATEGORICAL if c in events.columns]
    t = pl.col("event_time")
    return events.select("event_id", pl.col("amount").cast(pl.Float64),
                         t.dt.hour().cast(pl.Float64).alias("hour"), t.dt.weekday().cast(pl.Float64).alias("weekday"),
                         *[pl.col(c).cast(pl.String) for c in cats])


def window_frame(events: pl.DataFrame) -> pl.DataFrame:
    """``event_id`` and the window columns, each event seeing only strictly earlier events.

    ``events`` should hold every event (all splits): a validation event's 7-day window
    then reaches back into training, exactly as the plan's features do.
    """
    plan = FeaturePlan([("windows", window_step())])
    needed = ["event_id", *plan.required_columns()]
    return plan.transform(events.select(needed)).select("event_id", *plan.feature_columns())


@dataclass
class CategoryCodes:
    """Integer codes per categorical column, learnt on the training window.

    Estimator contract: the constructor stores the columns, :meth:`fit` learns ``codes_``
    (sorted distinct training values -> 0, 1, ...), :meth:`transform` is pure. A column
    that is null throughout training is dropped; values unseen in training become null.
    """

    columns: list[str]

    def fit(self, train: pl.DataFrame) -> "CategoryCodes":
        self.codes_ = {}
        for c in self.columns:
            values = sorted(train[c].drop_nulls().unique().to_list())
            if values:
                self.codes_[c] = {v: i for i, v in enumerate(values)}
        return self

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.col(c).replace_strict(codes, default=None, return_dtype=pl.Float64) for c, codes in self.codes_.items()
        ).drop([c for c in self.columns if c not in self.codes_])


# ----------------------------------------------------------------------------- fit and score
class CategoricalLightGBM(LightGBMClassifier):
    """The project's LightGBM classifier with native categorical splits on some columns.

    LightGBM takes ``categorical_feature`` only as a ``Dataset`` argument (in ``params`` it
    is ignored with a warning), so this subclass passes it there; everything else (the
    parameter checks, early stopping on validation average precision, keeping the best
    iteration's trees) is the parent's. A team's first model would use native categorical
    splits, so coding the categories as ordinals would understate the baseline.
    """

    def __init__(self, categorical: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categorical = list(categorical)

    def _fit(self, X, y, w, valid) -> None:
        params = self._train_params()
        train = lgb.Dataset(X, label=y, weight=w, feature_name=_safe_lightgbm_names(self.feature_names),
                            categorical_feature=self.categorical or "auto", params=params, free_raw_data=True)
        valid_sets = [train.create_valid(valid[0], label=valid[1])] if valid is not None else []
        callbacks = [lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False)] if valid_sets else []
        booster = lgb.train(params, train, num_boost_round=self._num_rounds(), valid_sets=valid_sets,
                            valid_names=["valid"] * len(valid_sets), callbacks=callbacks)
        if valid_sets and booster.best_iteration > 0:
            self.best_iteration = int(booster.best_iteration)
        self._model = lgb.Booster(model_str=booster.model_to_string(num_iteration=self.best_iteration or -1))


@dataclass
class FittedBaseline:
    """One learned baseline after :func:`fit_baseline`: its columns, codes and model."""

    name: str
    numeric: list[str]
    codes: CategoryCodes
    model: CategoricalLightGBM

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.codes.codes_]

    def matrix(self, frame: pl.DataFrame) -> np.ndarray:
        coded = self.codes.transform(frame)
        return coded.select(pl.col(c).cast(pl.Float64) for c in self.columns).to_numpy().astype(np.float64, copy=False)

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        return self.model.predict_proba(self.matrix(frame))


def baseline_table(events: pl.DataFrame, name: str, fx: FxTable | None = None) -> tuple[pl.DataFrame, list[str], list[str]]:
    """(frame with ``split``, ``label`` and the baseline's columns, numeric, categorical).

    ``fx``: the plan's reporting currency (``features.fx``), or None; with it, ``amount``
    and the window sums are in that currency, as the plan's steps see them."""
    if name not in NAMES:
        raise ValueError(f"unknown learned baseline {name!r}; allowed: {', '.join(NAMES)}")
    if fx is not None:
        events = fx.convert_frame(events)
    raw = raw_frame(events)
    numeric = list(RAW_NUMERIC)
    if name == "raw_windows":
        windows = window_frame(events)
        numeric += [c for c in windows.columns if c != "event_id"]
        raw = raw.join(windows, on="event_id", how="left")
    table = events.select("event_id", "split", "label").join(raw, on="event_id", how="left", maintain_order="left")
    return table, numeric, [c for c in RAW_CATEGORICAL if c in raw.columns]


def fit_baseline(table: pl.DataFrame, name: str, numeric: list[str], categorical: list[str],
                 weighting: Weighting, spec: BaselineModel) -> FittedBaseline:
    """Fit on ``split == "train"``, stop early on ``split == "valid"``; test rows are not read."""
    train = table.filter(pl.col("split") == "train")
    valid = table.filter(pl.col("split") == "valid")
    codes = CategoryCodes(categorical).fit(train)
    categorical_idx = list(range(len(numeric), len(numeric) + len(codes.codes_)))
    model = CategoricalLightGBM(categorical_idx, early_stopping_rounds=spec.early_stopping_rounds,
                                params=spec.params, seed=spec.seed)
    fitted = FittedBaseline(name, list(numeric), codes, model)
    y_train = train["label"].to_numpy().astype(np.int64)
    y_valid = valid["label"].to_numpy().astype(np.int64)
    model.fit(fitted.matrix(train), y_train, sample_weight=weighting.weights(y_train),
              X_valid=fitted.matrix(valid), y_valid=y_valid, feature_names=fitted.columns)
    return fitted


def baseline_block(fitted: FittedBaseline, table: pl.DataFrame, report_precisions: Iterable[float]) -> tuple[dict, pl.DataFrame]:
    """(metrics of one fitted baseline, ``event_id, score`` of its test events)."""
    valid = table.filter(pl.col("split") == "valid")
    test = table.filter(pl.col("split") == "test")
    valid_score, test_score = fitted.predict(valid), fitted.predict(test)
    y = test["label"].to_numpy()
    block = {
        "pr_auc": pr_auc(y, test_score),
        "roc_auc": roc_auc(y, test_score),
        "recall_at_precision": recall_at_precision(y, test_score, [float(p) for p in report_precisions]),
        "valid_pr_auc": pr_auc(valid["label"].to_numpy(), valid_score),
        "rounds": fitted.model.best_iteration,
        "features": fitted.columns,
    }
    return block, test.select("event_id").with_columns(pl.Series("score", test_score))


def learned_baselines(events: pl.DataFrame, names: Iterable[str], weighting: Weighting, spec: BaselineModel,
                      report_precisions: Iterable[float], progress=None,
                      fx: FxTable | None = None) -> tuple[dict[str, dict], dict[str, pl.DataFrame]]:
    """Fit and judge each named baseline; returns (name -> metrics, name -> test scores).

    ``events``: canonical events of every split, with ``split`` (train/valid/test) and
    ``label``. ``progress(message)`` is an optional context manager factory (the task
    passes :func:`aml_pipeline.progress.status`). ``fx``: the plan's reporting currency
    (the fitted plan's ``fx``), or None to use amounts as given.
    """
    blocks: dict[str, dict] = {}
    scores: dict[str, pl.DataFrame] = {}
    report_precisions = list(report_precisions)
    for name in names:
        name = str(option_value(name))
        ctx = progress(f"evaluate: learned baseline {name} (LightGBM, rounds chosen on validation)") if progress else nullcontext()
        with ctx:
            table, numeric, categorical = baseline_table(events, name, fx)
            fitted = fit_baseline(table, name, numeric, categorical, weighting, spec)
            blocks[name], scores[name] = baseline_block(fitted, table, report_precisions)
    return blocks, scores

