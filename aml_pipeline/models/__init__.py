"""Models: binary classifiers behind one numpy API, and sample-weighting strategies.

Both are config groups (``conf/model/``, ``conf/weighting/``). Classifiers save to a bundle
folder (LightGBM text / skops, never pickle) and load back through :func:`load_classifier`,
which only knows the classes registered in :data:`CLASSIFIERS` (and the engines' classifiers
of :data:`ENGINE_CLASSIFIERS`, e.g. the MLlib models in :mod:`aml_pipeline.spark.mllib`).
"""

from aml_pipeline.models.classifiers import (
    CLASSIFIERS,
    ENGINE_CLASSIFIERS,
    Classifier,
    HistGradientBoostingClassifier,
    LightGBMClassifier,
    LogisticRegressionClassifier,
    RandomForestClassifier,
    load_classifier,
)
from aml_pipeline.models.weighting import (
    WEIGHTINGS,
    FixedPositive,
    InverseFrequency,
    NoWeighting,
    SqrtInverseFrequency,
    Weighting,
    binary_labels,
)

__all__ = [
    "CLASSIFIERS",
    "ENGINE_CLASSIFIERS",
    "WEIGHTINGS",
    "Classifier",
    "FixedPositive",
    "HistGradientBoostingClassifier",
    "InverseFrequency",
    "LightGBMClassifier",
    "LogisticRegressionClassifier",
    "NoWeighting",
    "RandomForestClassifier",
    "SqrtInverseFrequency",
    "Weighting",
    "binary_labels",
    "load_classifier",
]
