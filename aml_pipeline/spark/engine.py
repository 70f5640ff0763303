"""The Spark engine (``engine=spark``): the same stages, compiled to Spark on ``engine.master``.

Each method is the Spark form of the polars engine's stage and writes the same files
(:mod:`.tasks` for data and features, :mod:`.train` for the MLlib classifiers,
:mod:`.scoring` for scoring and the promotion gate's re-scoring). Classifiers that train
on the driver (LightGBM, scikit-learn) train as the polars engine trains them, on the
feature table Spark wrote.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.engines import Engine, Rescorer
from aml_pipeline.engines.polars import PolarsEngine
from aml_pipeline.errors import ConfigError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.layout import Layout
from aml_pipeline.spark.mllib import MLlibClassifier
from aml_pipeline.spark.scoring import rescore_bundles, score_to
from aml_pipeline.spark.tasks import run_data, run_features
from aml_pipeline.spark.train import train_bundle


class SparkEngine(Engine):
    """Spark on ``engine.master`` (see the module doc)."""

    name: ClassVar[str] = "spark"

    def data(self, cfg: DictConfig) -> dict:
        return run_data(cfg)

    def features(self, cfg: DictConfig, plan: FeaturePlan, layout: Layout) -> tuple[dict, int]:
        return run_features(cfg, plan, layout)

    def train(self, cfg: DictConfig, model: Any, plan: FeaturePlan, layout: Layout) -> ModelBundle:
        if isinstance(model, MLlibClassifier):
            return train_bundle(cfg, model, plan, layout)
        return PolarsEngine().train(cfg, model, plan, layout)

    def check_runtime(self, runtime: str) -> None:
        if runtime != "native":
            raise ConfigError(f"deploy.model_runtime={runtime}: engine=spark scores with the native model only "
                              f"(use engine=polars for an export)")

    def score(self, cfg: DictConfig, bundle: ModelBundle, runtime: str, out: Path) -> tuple[int, int]:
        self.check_runtime(runtime)
        return score_to(cfg, bundle, out)

    def rescorer(self, cfg: DictConfig) -> Rescorer:
        return functools.partial(rescore_bundles, cfg)


__all__ = ["SparkEngine"]
