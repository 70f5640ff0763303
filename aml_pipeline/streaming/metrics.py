"""Prometheus metrics of the streaming scorer (``deploy.metrics_port``).

Why: ``task=monitor`` judges a window after the fact; an operator running the stream wants
the same signals while it runs, on the dashboards and alert rules they already have. With
``deploy.metrics_port`` set the scorer serves ``/metrics`` (prometheus-client's HTTP
server, a thread of the driver) with:

- the scorer's counts, as it reconciles them (``records_in = scored + dead_lettered + late
  + pending``): ``aml_stream_{records_in,scored,dead_lettered,late,alerts,deferred,batches}_total``
  and ``aml_stream_pending_events``. They are the counts of the checkpoint's whole life (a
  restart resumes them from the scorer's state), so they equal ``stream_summary.json``'s;
- ``aml_stream_alerts_by_jurisdiction_total{jurisdiction}``: the alerts written (not the
  deferred ones) since this process started;
- micro-batch timing and lag: ``aml_stream_batch_duration_seconds`` (histogram),
  ``aml_stream_last_batch_{duration,timestamp}_seconds``, ``aml_stream_event_lag_seconds``
  (wall clock at the end of a batch minus the newest event time it scored: how far the
  scored events trail real time) and ``aml_stream_watermark_delay_seconds`` (newest event
  time seen minus the watermark: how long events wait for their scoring);
- over a sliding window of the last ``deploy.metrics_window`` scored events: the alert
  rate (overall and per jurisdiction, beside the reference's) and the drift of the score
  and of every monitored feature against the bundle's reference (``reference.json``):
  ``aml_stream_drift_psi{column}``, ``aml_stream_drift_js{column}``,
  ``aml_stream_drift_status{column}`` (0 ok, 1 warn, 2 alert, -1 not judged),
  ``aml_stream_drift_detected`` and the levels themselves. PSI, JS, binning and levels are
  :mod:`aml_pipeline.monitoring`'s, with the ``monitor`` group's settings, so a gauge equals
  what ``task=monitor`` reports on the same events; a window under ``monitor.min_events``
  is shown, not judged;
- with ``deploy.shadow``: the shadow's agreement (``aml_stream_shadow_decisions_total{live,shadow}``,
  failures, and the window's alert overlap and rank correlation by
  :func:`aml_pipeline.monitoring.agreement.agreement`).

The drift is computed when ``/metrics`` is scraped (and only if a micro-batch came since the
last scrape), in the server's thread: a stream nobody scrapes pays nothing for it, and a
micro-batch pays only for keeping the window's rows.

prometheus-client comes with the ``serve`` extra; it is imported here only.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import polars as pl

from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.monitoring.agreement import agreement
from aml_pipeline.monitoring.drift import RANK, Levels, drift_report, levels_of
from aml_pipeline.monitoring.histograms import REFERENCE_BINS
from aml_pipeline.monitoring.volume import per_jurisdiction
from aml_pipeline.timeutil import config_duration_us

try:  # the serve extra; a stream without deploy.metrics_port never needs it
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # pragma: no cover - exercised only without the extra
    prometheus_client = None

#: The scorer's counts exported as counters (``aml_stream_<name>_total``).
COUNTERS = ("records_in", "scored", "dead_lettered", "late", "alerts", "deferred", "batches")
#: aml_stream_drift_status values.
STATUS_VALUE = {**RANK, "excluded": -1}
BATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SHADOW_COLUMNS = ("shadow_score", "shadow_alert", "shadow_model_version")


def _yes(flag: bool) -> str:
    return "alert" if flag else "no_alert"


class StreamMetrics:
    """The scorer's metrics registry: fed by the scorer after each micro-batch, read on scrape."""

    def __init__(self, scorer: Any, levels: Levels, bins: int, exclude: list[str], min_events: int, window: int,
                 runtime: str = "native"):
        if prometheus_client is None:
            raise UserError("deploy.metrics_port needs prometheus-client: pip install -e '.[serve]' "
                            "(or pip install prometheus-client)")
        if int(window) < 1:
            raise UserError(f"deploy.metrics_window={window} must be >= 1 (scored events the gauges look back over)")
        self.scorer = scorer
        self.reference = scorer.bundle.reference
        self.levels = levels
        self.bins = int(bins)
        self.exclude = list(exclude)
        self.min_events = int(min_events)
        self.size = int(window)
        self.runtime = runtime
        ref_columns = list(self.reference["columns"]) if self.reference else ["jurisdiction"]
        self.columns = ["event_id", "event_time", "score", "alert",
                        *[c for c in dict.fromkeys(["jurisdiction", *ref_columns])]]
        self._lock = threading.Lock()
        self._parts: list[pl.DataFrame] = []  # the window's rows, whole micro-batches, oldest first
        self._rows = 0
        self._version = 0
        self._cached: tuple[int, dict] | None = None
        self._compute = threading.Lock()
        self.by_jurisdiction: dict[str, int] = {}
        self.shadow: dict[tuple[str, str], int] = {}
        self.shadow_failures = 0
        self.last: dict[str, float] = {}
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.batch_seconds = prometheus_client.Histogram(
            "aml_stream_batch_duration_seconds", "Time of a micro-batch in the scorer, read to commit.",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(self)
        self.server = None
        self.url: str | None = None

    # -- fed by the scorer ------------------------------------------------------------------
    def on_decisions(self, decisions: pl.DataFrame, alerts: list[dict], shadow: pl.DataFrame | None) -> None:
        """A micro-batch's decisions (one per scored event), the alerts kept, the shadow's decisions."""
        for a in alerts:
            j = str(a.get("jurisdiction"))
            self.by_jurisdiction[j] = self.by_jurisdiction.get(j, 0) + 1
        if not decisions.height:
            return
        rows = decisions.select([c for c in self.columns if c in decisions.columns])
        if shadow is not None and shadow.height:
            rows = rows.join(shadow.select("event_id", *SHADOW_COLUMNS), on="event_id", how="left")
            for live, sh, n in rows.group_by("alert", "shadow_alert").len().filter(
                    pl.col("shadow_alert").is_not_null()).iter_rows():
                key = (_yes(live), _yes(sh))
                self.shadow[key] = self.shadow.get(key, 0) + int(n)
        newest = decisions["event_time"].max()
        self.last["event_lag"] = time.time() - newest.timestamp() if newest is not None else float("nan")
        with self._lock:
            self._parts.append(rows)
            self._rows += rows.height
            while self._parts and self._rows - self._parts[0].height >= self.size:
                self._rows -= self._parts.pop(0).height
            self._version += 1

    def on_shadow_failure(self) -> None:
        self.shadow_failures += 1

    def on_batch(self, seconds: float) -> None:
        self.batch_seconds.observe(seconds)
        self.last["duration"] = seconds
        self.last["timestamp"] = time.time()

    # -- read on scrape -----------------------------------------------------------------------
    def window(self) -> pl.DataFrame:
        """The last ``metrics_window`` scored events (their score, alert, jurisdiction, features)."""
        with self._lock:
            parts = list(self._parts)
        if not parts:
            return pl.DataFrame()
        return pl.concat(parts, how="diagonal_relaxed").tail(self.size)

    def _window_figures(self) -> dict:
        with self._compute:
            with self._lock:
                version = self._version
            if self._cached and self._cached[0] == version:
                return self._cached[1]
            w = self.window()
            figures: dict[str, Any] = {"events": w.height}
            if w.height:
                figures["alert_rate"] = float(w["alert"].mean())
                figures["per_jurisdiction"] = per_jurisdiction(w, self.reference or {})
                if self.reference:
                    judged = w.height >= self.min_events
                    exclude = self.exclude if judged else ["score", *self.reference["columns"]]
                    figures["drift"] = drift_report(self.reference, w, self.levels, self.bins, exclude)
                    figures["judged"] = judged
                if "shadow_score" in w.columns:
                    figures["shadow"] = agreement(w)
            self._cached = (version, figures)
            return figures

    def collect(self):
        s = self.scorer
        counts = dict(s.counts)
        for name in COUNTERS:
            yield CounterMetricFamily(f"aml_stream_{name}", f"Scorer count {name} over the checkpoint's life.",
                                      value=float(counts.get(name, 0)))
        yield GaugeMetricFamily("aml_stream_pending_events", "Accepted events held until the watermark passes them.",
                                value=float(counts.get("pending", 0)))
        jur = CounterMetricFamily("aml_stream_alerts_by_jurisdiction", "Alerts written since start, by jurisdiction.",
                                  labels=["jurisdiction"])
        for j, n in sorted(self.by_jurisdiction.items()):
            jur.add_metric([j], float(n))
        yield jur
        for key, name, doc in (("duration", "aml_stream_last_batch_duration_seconds", "The last micro-batch's time."),
                               ("timestamp", "aml_stream_last_batch_timestamp_seconds", "When the last micro-batch ended (epoch s)."),
                               ("event_lag", "aml_stream_event_lag_seconds",
                                "Wall clock at the end of the last scoring batch minus the newest event time it scored.")):
            if key in self.last:
                yield GaugeMetricFamily(name, doc, value=self.last[key])
        if s.max_seen is not None and s.watermark is not None:
            yield GaugeMetricFamily("aml_stream_watermark_delay_seconds", "Newest event time seen minus the watermark.",
                                    value=(s.max_seen - s.watermark) / 1e6)
        info = GaugeMetricFamily("aml_stream_bundle_info", "The live bundle (value 1).",
                                 labels=["model_name", "model_version", "bundle_hash", "model_runtime"])
        t = s.trace
        info.add_metric([str(t.get("model_name")), str(t.get("model_version")), str(t.get("bundle_hash")), self.runtime], 1.0)
        yield info
        yield from self._window_metrics()
        yield from self._shadow_metrics()

    def _window_metrics(self):
        f = self._window_figures()
        yield GaugeMetricFamily("aml_stream_window_events", "Scored events in the sliding window (deploy.metrics_window).",
                                value=float(f["events"]))
        if not f["events"]:
            return
        yield GaugeMetricFamily("aml_stream_window_alert_rate", "Share of the window's scored events that alert "
                                "(deferred ones included).", value=f["alert_rate"])
        rates = GaugeMetricFamily("aml_stream_window_alert_rate_by_jurisdiction", "The window's alert rate per "
                                  "jurisdiction.", labels=["jurisdiction"])
        ref_rates = GaugeMetricFamily("aml_stream_reference_alert_rate_by_jurisdiction", "The reference's (validation "
                                      "window's) alert rate per jurisdiction.", labels=["jurisdiction"])
        for r in f["per_jurisdiction"]:
            rates.add_metric([str(r["jurisdiction"])], float(r["alert_rate"]))
            if r["reference_alert_rate"] is not None:
                ref_rates.add_metric([str(r["jurisdiction"])], float(r["reference_alert_rate"]))
        yield rates
        yield ref_rates
        ref_rate = ((self.reference or {}).get("alerts") or {}).get("alert_rate")
        if ref_rate is not None:
            yield GaugeMetricFamily("aml_stream_reference_alert_rate", "The bundle's alert rate on its validation window.",
                                    value=float(ref_rate))
        d = f.get("drift")
        if d is None:
            return
        psi = GaugeMetricFamily("aml_stream_drift_psi", "PSI of the window against the bundle's reference.", labels=["column"])
        js = GaugeMetricFamily("aml_stream_drift_js", "Jensen-Shannon distance (base 2) of the window against the reference.",
                               labels=["column"])
        status = GaugeMetricFamily("aml_stream_drift_status", "0 ok, 1 warn, 2 alert, -1 not judged (excluded, or the "
                                   "window under monitor.min_events).", labels=["column"])
        for name, r in [("score", d["score"]), *d["columns"].items()]:
            psi.add_metric([name], float(r["psi"]))
            js.add_metric([name], float(r["js"]))
            status.add_metric([name], float(STATUS_VALUE[r["status"]]))
        yield psi
        yield js
        yield status
        yield GaugeMetricFamily("aml_stream_drift_detected", "1 when a judged column or the score reached an alert level.",
                                value=1.0 if f["judged"] and d["drift"] else 0.0)
        levels = GaugeMetricFamily("aml_stream_drift_level", "The monitor group's levels.", labels=["measure", "level"])
        for measure, (warn, alert) in self.levels.levels.items():
            levels.add_metric([measure, "warn"], warn)
            levels.add_metric([measure, "alert"], alert)
        yield levels

    def _shadow_metrics(self):
        if not self.shadow and not self.shadow_failures and self.scorer.shadow is None:
            return
        c = CounterMetricFamily("aml_stream_shadow_decisions", "Scored events by the live and the shadow decision.",
                                labels=["live", "shadow"])
        for live in ("alert", "no_alert"):
            for sh in ("alert", "no_alert"):
                c.add_metric([live, sh], float(self.shadow.get((live, sh), 0)))
        yield c
        yield CounterMetricFamily("aml_stream_shadow_failures", "Micro-batches the shadow failed to score or write.",
                                  value=float(self.shadow_failures))
        a = self._window_figures().get("shadow")
        if a:
            for key, name, doc in (("alert_overlap", "aml_stream_shadow_alert_overlap",
                                    "Alerts both raise over alerts either raises, in the window."),
                                   ("rank_correlation", "aml_stream_shadow_rank_correlation",
                                    "Spearman correlation of live and shadow scores in the window."),
                                   ("decisions_agree", "aml_stream_shadow_decisions_agree",
                                    "Share of the window's events both decide alike.")):
                if a.get(key) is not None:
                    yield GaugeMetricFamily(name, doc, value=float(a[key]))

    # -- the HTTP server ------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> str:
        """Start /metrics; returns its URL. A port in use is a one-line error."""
        try:
            self.server, _ = prometheus_client.start_http_server(int(port), addr=str(host), registry=self.registry)
        except OSError as exc:
            raise UserError(f"deploy.metrics_port={port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def render(self) -> bytes:
        """The exposition text (what /metrics answers)."""
        return prometheus_client.generate_latest(self.registry)


def metrics_options(cfg) -> dict[str, Any] | None:
    """``deploy.metrics_*`` and the ``monitor`` group's levels, checked before any work
    (None when ``deploy.metrics_port`` is null)."""
    d = cfg.deploy
    port = d.get("metrics_port")
    if port is None:
        return None
    if prometheus_client is None:
        raise UserError("deploy.metrics_port needs prometheus-client: pip install -e '.[serve]' "
                        "(or pip install prometheus-client)")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"deploy.metrics_port={port} must be a TCP port, 1-65535 (null = no metrics)")
    if int(d.metrics_window) < 1:
        raise ConfigError(f"deploy.metrics_window={d.metrics_window} must be >= 1 (scored events the gauges look back over)")
    m = cfg.monitor
    if not 2 <= int(m.bins) <= REFERENCE_BINS:
        raise ConfigError(f"monitor.bins must be between 2 and {REFERENCE_BINS} (got {m.bins})")
    linger = config_duration_us(d.metrics_linger, "deploy.metrics_linger", allow_zero=True)
    return {"host": str(d.metrics_host), "port": int(port), "window": int(d.metrics_window), "levels": levels_of(m),
            "bins": int(m.bins), "exclude": [str(c) for c in m.exclude], "min_events": int(m.min_events),
            "linger_s": linger / 1e6}


def start_metrics(options: dict[str, Any], scorer: Any, runtime: str) -> StreamMetrics:
    """The scorer's metrics, fed by it from now on, served on ``options``' host and port."""
    metrics = StreamMetrics(scorer, options["levels"], options["bins"], options["exclude"], options["min_events"],
                            options["window"], runtime)
    metrics.url = metrics.serve(options["host"], options["port"])
    scorer.metrics = metrics
    if scorer.shadow is not None:
        scorer.shadow.on_failure = metrics.on_shadow_failure
    return metrics


def linger(metrics: StreamMetrics | None, seconds: float, stopped: list[int]) -> None:
    """Keep /metrics up ``seconds`` after the stream ended, or until one more stop signal."""
    if metrics is None or seconds <= 0:
        return
    print(f"metrics: the final counts stay on {metrics.url} for {seconds:g}s (SIGTERM ends it)", file=sys.stderr, flush=True)
    signals = len(stopped)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(stopped) == signals:
        time.sleep(0.1)
