"""Engines: where a run's heavy work happens, chosen by ``engine=polars|spark``.

An engine is an object built from ``conf/engine/<name>.yaml`` by its ``_target_`` (through
the registry of :mod:`aml_pipeline.build`, like a source or a model). Every stage task asks
the engine for its part and never looks at the engine's name:

=================  ===========================================================
``data``           read the source, validate, write the validated and quarantine
                   layers and ``summary.json``
``features``       split by time, fit the plan on the training window, write the
                   feature table
``train``          fit a classifier on the feature table, choose thresholds
``score``          score events with a bundle into one parquet file
``rescorer``       how ``task=promote`` re-scores the registered versions
=================  ===========================================================

Both engines read and write the same files with the same values, so stages may mix them
(the parity suites prove it). A classifier may name the engine it must train on
(:attr:`~aml_pipeline.models.base.Classifier.engine`: the MLlib models train in Spark
whatever ``engine`` says): :func:`trainer_of` honours it.

The Spark engine lives in :mod:`aml_pipeline.spark.engine` and is only imported when
chosen; without the ``spark`` extra, choosing it is one line naming the pip command.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from aml_pipeline.build import build
from aml_pipeline.bundle import ModelBundle
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.layout import Layout
from aml_pipeline.lifecycle.promote import Rescorer  # the type of Engine.rescorer's answer


class Engine(ABC):
    """The stages' work on one engine; methods take the composed config, as tasks do."""

    #: The option's name (``engine=<name>``), shown in progress lines.
    name: ClassVar[str]

    def __init__(self, **settings: Any) -> None:
        """The engine group's values (master, memory ...) arrive as keyword arguments, as
        every built option's do; the stages read them from ``cfg.engine``, which holds the
        same values, so the engine keeps none of its own."""

    def check_runtime(self, runtime: str) -> None:
        """Refuse a ``deploy.model_runtime`` this engine's score stage cannot use, before
        the bundle is loaded (ConfigError); every runtime by default."""

    @abstractmethod
    def data(self, cfg: DictConfig) -> dict:
        """``task=data``: write the validated and quarantine layers and ``summary.json``; returns the summary."""

    @abstractmethod
    def features(self, cfg: DictConfig, plan: FeaturePlan, layout: Layout) -> tuple[dict, int]:
        """``task=features``: fit ``plan`` and write ``layout.features``; returns (window bounds, events)."""

    @abstractmethod
    def train(self, cfg: DictConfig, model: Any, plan: FeaturePlan, layout: Layout) -> ModelBundle:
        """``task=train``: fit ``model`` on ``layout.features`` and return the bundle (not yet saved)."""

    @abstractmethod
    def score(self, cfg: DictConfig, bundle: ModelBundle, runtime: str, out: Path) -> tuple[int, int]:
        """``task=score``: write the decisions of ``input=`` (or the source) to ``out``; returns (events, alerts)."""

    @abstractmethod
    def rescorer(self, cfg: DictConfig) -> Rescorer:
        """How ``task=promote`` re-scores the challenger and the champion."""


def engine_of(cfg: DictConfig) -> Engine:
    """The configured engine (``engine._target_``)."""
    return build(cfg.engine, "engine")


def trainer_of(cfg: DictConfig, model: Any) -> Engine:
    """The engine that trains ``model``: its own when it names one, else the configured one."""
    target = getattr(model, "engine", None)
    if target is None:
        return engine_of(cfg)
    return build(OmegaConf.create({"_target_": target, "name": model.name}), "engine")


__all__ = ["Engine", "Rescorer", "engine_of", "trainer_of"]
