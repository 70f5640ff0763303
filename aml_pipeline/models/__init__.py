"""Models: binary classifiers behind one numpy API, and sample-weighting strategies.

Both are config groups (``conf/model/``, ``conf/weighting/``). Classifiers save to a bundle
folder (LightGBM text / skops, never pickle) and load back through :func:`load_classifier`,
which only knows the classes registered in :data:`CLASSIFIERS`.
"""

from aml_pipeline.models.classifiers import (
    CLASSIFIERS,
    Classifier,
    HistGradientBoostingClassifier,
    LightGBMClassifier,
    LogisticRegressionClassifier,
    RandomForestClassifier,
    load_classifier,
)
from aml_pipeline.models.mllib import (
    MLLIB_CLASSIFIERS,
    MLlibClassifier,
    SparkGBTClassifier,
    SparkLogisticRegression,
    SparkRandomForestClassifier,
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
    "MLLIB_CLASSIFIERS",
    "WEIGHTINGS",
    "Classifier",
    "FixedPositive",
    "HistGradientBoostingClassifier",
    "InverseFrequency",
    "LightGBMClassifier",
    "LogisticRegressionClassifier",
    "MLlibClassifier",
    "NoWeighting",
    "RandomForestClassifier",
    "SparkGBTClassifier",
    "SparkLogisticRegression",
    "SparkRandomForestClassifier",
    "SqrtInverseFrequency",
    "Weighting",
    "binary_labels",
    "load_classifier",
]
