"""The feature contract: a step declared once, fitted on the past, applied anywhere.

A :class:`FeatureStep` follows the estimator contract: the constructor stores parameters,
``fit`` learns state from the training window only (attributes ending ``_``, JSON
serialisable), and ``transform`` is a pure function of the events it is given. Each step
declares the canonical columns it needs and the columns (with dtypes) it adds, so a plan
can be checked against a source before any work, and compiled to other engines.

**The same-instant rule.** An event's features use only events whose ``event_time`` is
*strictly earlier* than its own. Events at the same instant never see each other, whatever
order they arrive in; this makes every feature independent of arrival order and of how
events are split into batches or partitions, so offline, streaming and online engines
agree exactly.

**History.** ``FeaturePlan.transform(events, history=...)`` accepts earlier events that
are not to be scored (a streaming micro-batch's account histories). They take part in
every aggregate exactly as if they had been in the same frame, and are dropped from the
output. Offline, the whole data set is one frame and needs no history.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import polars as pl

from aml_pipeline.errors import ConfigError

ROW = "_row"  # position of an event in the frame being transformed (restores order)
IS_QUERY = "_is_query"  # True for events to be scored, False for history-only rows
SRC, DST = "_src", "_dst"  # integer codes of src_account / dst_account (fast sort keys)


class FeatureStep(ABC):
    """One family of features. Subclasses are dataclasses whose fields are the parameters."""

    #: Registry name used in configs and bundles.
    kind: ClassVar[str] = ""
    #: True when the step can be computed event by event from account histories
    #: (streaming, online). A step that cannot is refused in a streaming config.
    per_event: ClassVar[bool] = True
    #: True when the step's values depend on other events (needs history when streaming).
    uses_history: ClassVar[bool] = False
    #: The engines that compute this kind, each checked against the others on random event
    #: streams by tests/test_feature_conformance.py: ``"polars"`` (``transform``, the
    #: reference; every kind has it), ``"online"`` (``online()``: the service and the
    #: streaming scorer, event by event from the store's rows) and ``"spark"`` (the polars
    #: step per account partition, plus, where that cannot serve, the kind's Spark form:
    #: ``spark_fit(train, ctx)`` for fitted state, ``spark_transform(frame, ctx)`` for a
    #: step run after the partitions; methods of the step, given pyspark and their helpers
    #: by ``ctx``, :class:`aml_pipeline.spark.features.Context`). An engine a kind does not
    #: declare refuses it by name.
    engines: ClassVar[tuple[str, ...]] = ()

    # -- contract ---------------------------------------------------------------------
    @abstractmethod
    def required_columns(self) -> list[str]:
        """Canonical (or extra) columns the step reads."""

    @abstractmethod
    def output_columns(self) -> dict[str, pl.DataType]:
        """Columns the step adds, in order, with their dtypes."""

    def history_window(self) -> str | None:
        """How far back an event's features look (a polars duration), or None."""
        return None

    def ahead(self, tl: Any) -> list[Callable[[], Any]]:
        """Computations on the plan's shared timeline (:class:`~aml_pipeline.features.windows.Timeline`)
        that this step's transform will ask for and that depend on no fitted state: the plan
        starts them before running the steps (:meth:`Timeline.ahead`). None by default."""
        return []

    def history_side(self, column: str) -> str | None:
        """Whose history an output column reads: ``"src"`` (the sender's), ``"dst"`` (the
        receiver's) or None (the event alone).

        By convention a history step's ``dst_*`` columns read the receiver's history and
        every other column the sender's (``reciprocal_*`` and ``cycle3_*`` too: the payments
        back to the sender, the paths into it). The Spark engine's account partitions rely
        on it: each column is taken from the partition that holds that account's whole
        history.
        """
        if not self.uses_history:
            return None
        return "dst" if column.startswith("dst_") else "src"

    def two_hop(self) -> tuple[str, list[str]] | None:
        """For steps that follow 2-hop paths a -> x -> b ending at an event's accounts:
        (the longest hop-to-hop delay, the intermediaries x that are never followed).
        None for every other step."""
        return None

    def two_hop_rows(self) -> int | None:
        """For :meth:`two_hop` steps: the most of an account's latest inflows (whole
        instants) whose payers the paths follow; None when every inflow's are."""
        return None

    def fit(self, frame: pl.DataFrame) -> "FeatureStep":
        """Learn state from the training window. Stateless steps need not override."""
        return self

    def fit_transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Fit, then transform the training window.

        Steps whose training features must not see the training labels' future (target
        encodings) override this to produce time-respecting values on the training rows.
        """
        return self.fit(frame).transform(frame)

    @abstractmethod
    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Return ``frame`` with the output columns added (all input columns kept)."""

    # -- state ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def state(self) -> dict[str, Any]:
        """Fitted state: every attribute ending in ``_``; must be JSON serialisable."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def load_state(self, state: dict[str, Any]) -> "FeatureStep":
        for k, v in state.items():
            setattr(self, k, v)
        return self

    def is_fitted(self) -> bool:
        return True


STEPS: dict[str, type[FeatureStep]] = {}


def register(cls: type[FeatureStep]) -> type[FeatureStep]:
    """Class decorator: make a step available to configs and bundles by its ``kind``."""
    STEPS[cls.kind] = cls
    return cls


def make_step(kind: str, params: dict[str, Any], where: str) -> FeatureStep:
    """Build a registered step, naming the config key and the allowed values on error."""
    if kind not in STEPS:
        raise ConfigError(f"{where}: unknown feature step {kind!r}; allowed: {', '.join(sorted(STEPS))}")
    cls = STEPS[kind]
    allowed = [p for p in inspect.signature(cls).parameters]
    for key in params:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: not a parameter of {kind}; allowed: {', '.join(allowed) or '(none)'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_json(obj: Any, where: str) -> None:
    """Fail early (at fit) if a step's state would not survive the bundle's JSON."""
    try:
        json.dumps(obj)
    except TypeError as exc:
        raise TypeError(f"{where}: fitted state is not JSON serialisable: {exc}") from None
