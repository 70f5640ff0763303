"""Sample-weighting strategies for heavily imbalanced AML labels.

Laundering is rare (well under 1 % of transactions), so an unweighted loss is dominated by
the negatives. Each strategy turns the training labels into per-row sample weights that the
classifiers pass to their library; the choice is a config group (``conf/weighting/``), so
it is swept and recorded like any other hyper-parameter.

Every strategy is built as ``Cls(positive_weight=...)`` (ignored where it has no meaning),
exposes ``weights(y) -> np.ndarray | None`` and ``describe() -> str`` for reports, and
refuses a training window that holds a single class: no weighting can rescue that, and
failing here names the real problem instead of a library error deep in ``fit``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from aml_pipeline.errors import ConfigError, UserError


def binary_labels(y: np.ndarray, window: str = "training window") -> np.ndarray:
    """Return ``y`` as a 1-D int8 0/1 array, refusing other values and a single class.

    Shared by the weightings and the classifiers so both fail with the same clear message.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5].tolist()
        raise ValueError(f"labels must be 0/1, found {bad}")
    labels = arr.astype(np.int8, copy=False)
    positives = int(labels.sum())
    if positives == 0:
        raise UserError(f"{window} has no positive labels; a classifier cannot learn laundering "
                        f"from {labels.size:,} negatives alone: widen the window (split.*) or "
                        "check the source's label column")
    if positives == labels.size:
        raise UserError(f"{window} has no negative labels (all {labels.size:,} rows are 1); "
                        "check the source's label column and positive_labels")
    return labels


class Weighting(ABC):
    """A rule turning labels into per-row sample weights (``None`` = all rows weigh 1)."""

    name: ClassVar[str]

    def __init__(self, positive_weight: float = 1.0) -> None:
        self.positive_weight = positive_weight

    def weights(self, y: np.ndarray) -> np.ndarray | None:
        """Per-row float64 weights for labels ``y`` (or None for unit weights)."""
        return self._weights(binary_labels(y))

    @abstractmethod
    def _weights(self, labels: np.ndarray) -> np.ndarray | None: ...

    @abstractmethod
    def describe(self) -> str:
        """One line for reports and run logs."""

    def class_weights(self, negatives: int, positives: int) -> tuple[float, float] | None:
        """(weight of a negative, weight of a positive) for a window with these class counts.

        Every strategy weighs a row by its label alone, so the per-row weights of
        :meth:`weights` are these two numbers spread over the rows. Distributed trainers
        (Spark MLlib's ``weightCol``) count the classes where the data lives and need only
        this pair, never the labels on the driver.
        """
        counts = np.array([negatives, positives], dtype=np.int64)
        if positives == 0:  # the messages of binary_labels, from counts
            raise UserError(f"training window has no positive labels; a classifier cannot learn laundering "
                            f"from {negatives:,} negatives alone: widen the window (split.*) or "
                            "check the source's label column")
        if negatives == 0:
            raise UserError(f"training window has no negative labels (all {positives:,} rows are 1); "
                            "check the source's label column and positive_labels")
        pair = self._class_pair(counts)
        return None if pair is None else (float(pair[0]), float(pair[1]))

    def _class_pair(self, counts: np.ndarray) -> np.ndarray | None:
        """[w0, w1] from the class counts (default: the row weights of one row per class)."""
        return self._weights(np.array([0, 1], dtype=np.int8))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


def _class_weights(labels: np.ndarray) -> np.ndarray:
    """[w0, w1] with w_c = n / (2 n_c): each class then carries half the total weight."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return labels.size / (2.0 * counts)


class NoWeighting(Weighting):
    """Every row weighs 1: the model sees the true class balance (best calibrated scores)."""

    name = "none"

    def _weights(self, labels: np.ndarray) -> None:
        return None

    def describe(self) -> str:
        return "no weighting (every row weighs 1)"


class InverseFrequency(Weighting):
    """Weight of class c = n / (2 n_c), sklearn's ``class_weight="balanced"``.

    Both classes then carry equal total weight; with 0.1 % positives a positive weighs
    ~1000x a negative, which helps ranking early in boosting but inflates scores
    (calibrate or pick thresholds on the validation window, as the pipeline does).
    """

    name = "inverse_frequency"

    def _weights(self, labels: np.ndarray) -> np.ndarray:
        return _class_weights(labels)[labels]

    def _class_pair(self, counts: np.ndarray) -> np.ndarray:
        return counts.sum() / (2.0 * counts.astype(np.float64))

    def describe(self) -> str:
        return "inverse class frequency: weight n / (2 n_class) (sklearn 'balanced')"


class SqrtInverseFrequency(Weighting):
    """Square root of the inverse-frequency weights, rescaled to average 1 over the rows.

    A middle ground: positives are up-weighted by sqrt(n_neg / n_pos) relative to
    negatives instead of n_neg / n_pos, so extreme imbalance does not turn a handful of
    positives into most of the loss. The mean-1 rescaling keeps the effective sample size
    (and so ``min_child_samples``-style hessian limits) on the same scale as unweighted.
    """

    name = "sqrt_inverse_frequency"

    def _weights(self, labels: np.ndarray) -> np.ndarray:
        w = np.sqrt(_class_weights(labels))[labels]
        return w / w.mean()

    def _class_pair(self, counts: np.ndarray) -> np.ndarray:
        pair = np.sqrt(counts.sum() / (2.0 * counts.astype(np.float64)))
        return pair / (float(pair @ counts) / float(counts.sum()))

    def describe(self) -> str:
        return "square-root inverse class frequency, rescaled to mean 1"


class FixedPositive(Weighting):
    """Positives weigh ``positive_weight``, negatives 1 (LightGBM's ``scale_pos_weight``).

    Stable across retrains: the weight does not move when a window's base rate does.
    """

    name = "fixed_positive"

    def __init__(self, positive_weight: float = 20.0) -> None:
        try:
            value = float(positive_weight)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value) or value <= 0:
            raise ConfigError(f"weighting.positive_weight={positive_weight!r} must be a finite number > 0 "
                              "(the weight of a positive row; negatives weigh 1)")
        super().__init__(value)

    def _weights(self, labels: np.ndarray) -> np.ndarray:
        return np.where(labels == 1, self.positive_weight, 1.0)

    def describe(self) -> str:
        return f"fixed: positives weigh {self.positive_weight:g}, negatives 1"


WEIGHTINGS: dict[str, type[Weighting]] = {
    cls.name: cls for cls in (NoWeighting, InverseFrequency, SqrtInverseFrequency, FixedPositive)
}
