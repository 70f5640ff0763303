"""The FeaturePlan: the ordered steps of ``conf/features``, fitted once, applied everywhere.

The plan is what the bundle stores (``to_dict``: each step's kind, parameters and fitted
state, all JSON) and what every engine compiles. It checks a source's columns before any
work, so a step that cannot run on a source (balances on AMLworld) fails with one line.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
from omegaconf import DictConfig, OmegaConf

from aml_pipeline.errors import ConfigError
from aml_pipeline.features.base import DST, IS_QUERY, ROW, SRC, STEPS, FeatureStep, check_json, make_step
from aml_pipeline.features.fx import FxTable
from aml_pipeline.features.windows import scored_events, shared_timelines, timeline
from aml_pipeline.timeutil import duration_us


def _import_kinds() -> None:
    """Import every module of this package, so that each feature kind's ``@register`` fills
    STEPS: a new kind is one module in aml_pipeline/features/ (docs/features.md, "Adding a
    feature kind")."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "plan":
            importlib.import_module(f"{__package__}.{module.name}")


_import_kinds()


class FeaturePlan:
    def __init__(self, steps: list[tuple[str, FeatureStep]], fx: FxTable | None = None):
        names = [n for n, _ in steps]
        if len(set(names)) != len(names):
            raise ConfigError(f"features.steps: step names must be unique, got {names}")
        self.steps = steps
        #: ``features.fx``: amounts are converted to one reporting currency before any step
        #: sees them (None: used as given). See :mod:`aml_pipeline.features.fx`.
        self.fx = fx
        outputs: dict[str, str] = {}
        for name, step in steps:
            for col in step.output_columns():
                if col in outputs:
                    raise ConfigError(f"features.steps.{name}: column {col!r} is also produced by step {outputs[col]!r}")
                outputs[col] = name

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_config(cls, steps_cfg: Mapping[str, Any], fx: Any = None) -> "FeaturePlan":
        """Build from ``features.steps``: ``{name: {kind: ..., <params>}}`` (kind defaults to name),
        and ``features.fx`` (null: no currency conversion)."""
        if isinstance(steps_cfg, DictConfig):
            steps_cfg = OmegaConf.to_container(steps_cfg, resolve=True)
        steps = []
        for name, spec in (steps_cfg or {}).items():
            spec = dict(spec or {})
            kind = spec.pop("kind", name)
            steps.append((str(name), make_step(str(kind), spec, f"features.steps.{name}")))
        if not steps:
            raise ConfigError("features.steps: the plan has no steps; allowed step kinds: " + ", ".join(sorted(STEPS)))
        return cls(steps, FxTable.from_config(fx))

    @classmethod
    def from_features_config(cls, features_cfg: Any) -> "FeaturePlan":
        """The plan of a whole ``features`` config node (steps and fx)."""
        return cls.from_config(features_cfg.steps, features_cfg.get("fx"))

    def without_fx(self) -> "FeaturePlan":
        """The same steps (sharing their fitted state) for input already in the reporting
        currency: what an engine that converted at its own entry runs, so nothing is
        converted twice."""
        if self.fx is None:
            return self
        return FeaturePlan(self.steps)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "steps": [{"name": n, "kind": s.kind, "params": s.params(), "state": s.state()} for n, s in self.steps]}
        if self.fx is not None:  # absent when off: bundles saved before fx existed load unchanged
            data["fx"] = self.fx.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeaturePlan":
        steps = []
        for entry in data["steps"]:
            step = make_step(entry["kind"], entry["params"], f"bundle feature step {entry['name']}")
            steps.append((entry["name"], step.load_state(entry.get("state", {}))))
        return cls(steps, FxTable.from_dict(data["fx"]) if data.get("fx") else None)

    # -- contract ---------------------------------------------------------------------
    def feature_columns(self) -> list[str]:
        return [c for _, s in self.steps for c in s.output_columns()]

    def output_schema(self) -> dict[str, pl.DataType]:
        return {c: d for _, s in self.steps for c, d in s.output_columns().items()}

    def required_columns(self) -> list[str]:
        seen: dict[str, None] = dict.fromkeys(["amount", "currency"]) if self.fx is not None else {}
        for _, s in self.steps:
            for c in s.required_columns():
                seen.setdefault(c, None)
        return list(seen)

    def history_window(self) -> str | None:
        """The longest look-back of any step (None when a step needs unbounded history)."""
        windows = []
        for _, s in self.steps:
            if s.uses_history:
                w = s.history_window()
                if w is None:
                    return None
                windows.append(w)
        return max(windows, key=duration_us) if windows else "0s"

    def not_per_event(self) -> list[str]:
        return [n for n, s in self.steps if not s.per_event]

    def check(self, frame: pl.DataFrame | pl.LazyFrame, source: str = "the source") -> None:
        """Refuse a step whose input columns the data lacks (or has only as nulls)."""
        schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
        if self.fx is not None and "currency" not in schema:
            raise ConfigError(f"features.fx needs column 'currency', which {source} does not provide; "
                              f"set features.fx=null or map the source's currency column")
        for name, step in self.steps:
            missing = [c for c in step.required_columns() if c not in schema]
            if not missing and isinstance(frame, pl.DataFrame) and frame.height:
                missing = [c for c in step.required_columns() if frame[c].null_count() == frame.height]
            if missing:
                raise ConfigError(
                    f"features.steps.{name} ({step.kind}) needs column {missing[0]!r}, which {source} does not provide; "
                    f"remove the step or choose a source that has it"
                )

    # -- engine: polars ---------------------------------------------------------------
    def _prepare(self, events: pl.DataFrame, history: pl.DataFrame | None) -> pl.DataFrame:
        if self.fx is not None:  # the one place the polars engine converts (history too, before they meet)
            events = self.fx.convert_frame(events)
            if history is not None:
                history = self.fx.convert_frame(history.select(events.columns), "history events")
        events = events.with_columns(pl.lit(True).alias(IS_QUERY))
        if history is not None and history.height:
            hist = history.select(events.columns[:-1]).with_columns(pl.lit(False).alias(IS_QUERY))
            events = pl.concat([hist, events], how="vertical_relaxed")
        # Account ids become integer codes once (one shared dictionary for both columns):
        # every history-based step sorts and groups by account, and integers sort ~2x faster.
        n = events.height
        codes = pl.concat([events["src_account"], events["dst_account"]]).cast(pl.Categorical).to_physical().cast(pl.Int64)
        return events.with_row_index(ROW).with_columns(
            pl.col(ROW).cast(pl.Int64), codes.slice(0, n).alias(SRC), codes.slice(n, n).alias(DST)
        )

    def _finish(self, frame: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
        out = frame.filter(pl.col(IS_QUERY)).sort(ROW).drop(ROW, IS_QUERY, SRC, DST)
        if self.fx is not None:  # the rows keep their own amount; only the features saw it converted
            out = out.with_columns(events["amount"])
        return out

    def _ahead(self, frame: pl.DataFrame) -> None:
        """Start the history steps' fit-independent window work in the background, so that
        it overlaps the sequential parts of the steps before them (see Timeline.ahead).
        Any problem with the frame is left to the step that meets it, as without this."""
        steps = [s for _, s in self.steps if s.uses_history]
        if not steps:
            return
        try:
            tl = timeline(frame)
        except Exception:  # noqa: BLE001 - the first history step raises it in its place
            return
        tl.ahead([task for s in steps for task in s.ahead(tl)])

    def fit_transform(self, train: pl.DataFrame) -> pl.DataFrame:
        """Fit every step on the training window and return its features."""
        self.check(train)
        frame = self._prepare(train, None)
        with shared_timelines():  # the steps share one sorted timeline of the events
            self._ahead(frame)
            for name, step in self.steps:
                frame = step.fit_transform(frame)
                check_json(step.state(), f"features.steps.{name}")
        return self._finish(frame, train)

    def transform(self, events: pl.DataFrame, history: pl.DataFrame | None = None) -> pl.DataFrame:
        """Features of ``events``; ``history`` rows take part in aggregates but are not returned."""
        self.check(events)
        frame = self._prepare(events, history)
        with shared_timelines():  # the steps share one sorted timeline of the events
            # History rows live on in the shared timeline, where every window sees them
            # (the history-based steps read their windows there); the steps compute and
            # carry columns for the events to be scored only.
            frame = scored_events(frame) if any(s.uses_history for _, s in self.steps) else frame.filter(pl.col(IS_QUERY))
            self._ahead(frame)
            for _, step in self.steps:
                frame = step.transform(frame)
        return self._finish(frame, events)
