"""Shadow scoring in the streaming scorer (``deploy.shadow``).

Why: before a challenger replaces the champion, the question is how it would decide the
stream the champion actually sees. The service already answers it per request
(:mod:`aml_pipeline.serving.shadow`); this is the same shadow for micro-batches. The shadow
bundle (same feature plan, refused at start-up otherwise, as in the service) scores the
feature values the live plan computed for the released events, in one model call per
micro-batch, and each decision goes to the ``shadow`` output only:
``<deploy.output>/shadow/part-<batch>.jsonl`` for files, topic ``deploy.topics.shadow``
(``aml_alerts_shadow``) on Kafka, through a sink of its own (its own producer). Nothing of
the shadow reaches the alerts, the deferred alerts, the budget or the scorer's state.

A shadow record is one per scored event: the event id, time and jurisdiction, the live
score, threshold and alert, the shadow's (``shadow_score``, ``shadow_threshold``,
``shadow_alert``, version and bundle hash) and the batch id. ``task=monitor
input=<output>/shadow`` reports the agreement from these records; with
``deploy.metrics_port`` it is on the metrics page too.

A failure of the shadow (its model, or its sink) is caught, counted, and printed as one
line; the champion's micro-batch goes on exactly as without a shadow. A micro-batch
replayed after a crash rewrites its shadow part (files) or publishes it again (Kafka, at
least once, keyed by event id).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import polars as pl

from aml_pipeline.serving.shadow import Shadow, load_shadow
from aml_pipeline.streaming.outputs import FileOutputs, KafkaOutputs, Outputs

#: The live decision's fields each shadow record carries beside the shadow's.
LIVE = ("event_id", "event_time", "jurisdiction", "score", "threshold", "alert", "model_version", "bundle_hash")


class StreamShadow:
    """The shadow bundle over micro-batches, with its own sink; never raises."""

    def __init__(self, shadow: Shadow, outputs: Outputs, uri: str):
        self.shadow = shadow
        self.outputs = outputs
        self.uri = uri
        self.trace = shadow.trace
        self.failures = 0
        self.on_failure = None  # called once per failure (the metrics' counter)

    def _fail(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        print(f"shadow {self.uri}: {what} failed, the live decisions are unaffected: "
              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr, flush=True)

    def decide(self, features: pl.DataFrame, decisions: pl.DataFrame) -> pl.DataFrame | None:
        """Per scored event, the live decision beside the shadow's; None when the shadow failed."""
        if not decisions.height:
            return None
        try:
            shadow = self.shadow.decide_frame(features)
            live = decisions.select([c for c in LIVE if c in decisions.columns])
            return live.join(shadow, on="event_id", how="left", maintain_order="left")
        except Exception as exc:  # the shadow never stops or changes the champion
            self._fail("scoring", exc)
            return None

    def write(self, tag: str, batch_id: int, frame: pl.DataFrame | None) -> None:
        if frame is None or not frame.height:
            return
        try:
            records = frame.with_columns(pl.lit(batch_id).alias("batch_id")).to_dicts()
            self.outputs.write(tag, "shadow", records)
            self.outputs.commit(tag)
        except Exception as exc:
            self._fail("writing", exc)

    def close(self) -> None:
        try:
            self.outputs.close()
        except Exception as exc:
            self._fail("closing its sink", exc)

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri, **self.trace, "failures": self.failures, "output": self.outputs.describe()}


def shadow_outputs(cfg, source: str) -> Outputs:
    """The shadow's own sink: ``<deploy.output>/shadow/`` or topic ``deploy.topics.shadow``."""
    d = cfg.deploy
    if source == "file":
        (Path(d.output) / "shadow").mkdir(parents=True, exist_ok=True)
        return FileOutputs(d.output)
    return KafkaOutputs(d.get("output_bootstrap_servers") or d.bootstrap_servers, {"shadow": str(d.topics.shadow)})


def load_stream_shadow(cfg, live, source: str) -> StreamShadow | None:
    """``deploy.shadow`` loaded and checked against the live bundle (None when not set)."""
    shadow = load_shadow(cfg, live)
    if shadow is None:
        return None
    return StreamShadow(shadow, shadow_outputs(cfg, source), str(cfg.deploy.shadow))
