"""Prometheus metrics of the service: requests, latency histogram, alerts, errors.

Uses ``prometheus_client`` (own registry) when it is installed, else writes the text
exposition format itself; both expose the same names:

- ``aml_requests_total{endpoint,status}``: requests answered;
- ``aml_request_latency_seconds{endpoint}``: histogram of time in the service;
- ``aml_decisions_total{decision}``: new decisions (alert / no_alert); replays excluded;
- ``aml_replays_total``: requests answered from a stored decision (idempotent replays);
- ``aml_alerts_total{jurisdiction}``: alerts raised;
- ``aml_errors_total{kind}``: refused or failed requests (auth, too_large, validation,
  unavailable, internal);
- ``aml_ready``: 1 once the bundle is loaded and the store warmed.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "aml_requests_total": ("counter", "Requests answered, by endpoint and HTTP status."),
    "aml_request_latency_seconds": ("histogram", "Time from request received to response sent, by endpoint."),
    "aml_decisions_total": ("counter", "New decisions, by decision (alert, no_alert)."),
    "aml_replays_total": ("counter", "Requests answered from a stored decision (event id seen before)."),
    "aml_alerts_total": ("counter", "Alerts raised, by jurisdiction."),
    "aml_errors_total": ("counter", "Refused or failed requests, by kind."),
    "aml_ready": ("gauge", "1 when the service is ready to score."),
}
_LABELS = {
    "aml_requests_total": ("endpoint", "status"),
    "aml_request_latency_seconds": ("endpoint",),
    "aml_decisions_total": ("decision",),
    "aml_replays_total": (),
    "aml_alerts_total": ("jurisdiction",),
    "aml_errors_total": ("kind",),
    "aml_ready": (),
}


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    return repr(float(v)) if v != int(v) else f"{int(v)}.0"


class _Plain:
    """The text exposition written by hand (no dependency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[tuple, float]] = {n: {} for n, (k, _) in _HELP.items() if k != "histogram"}
        self.hist: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def inc(self, name: str, labels: tuple = (), by: float = 1.0) -> None:
        with self._lock:
            c = self.counters[name]
            c[labels] = c.get(labels, 0.0) + by

    def set(self, name: str, value: float, labels: tuple = ()) -> None:
        with self._lock:
            self.counters[name][labels] = float(value)

    def observe(self, labels: tuple, seconds: float) -> None:
        with self._lock:
            h = self.hist.get(labels)
            if h is None:
                h = self.hist[labels] = [0] * len(BUCKETS) + [0.0, 0]
            i = bisect_left(BUCKETS, seconds)
            if i < len(BUCKETS):
                h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self) -> bytes:
        lines: list[str] = []
        with self._lock:
            for name, (kind, doc) in _HELP.items():
                lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
                names = _LABELS[name]
                if kind == "histogram":
                    for labels, h in sorted(self.hist.items()):
                        base = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(names, labels))
                        cum = 0
                        for le, n in zip(BUCKETS, h):
                            cum += n
                            lines.append(f'{name}_bucket{{{base},le="{le}"}} {cum}.0')
                        lines.append(f'{name}_bucket{{{base},le="+Inf"}} {h[-1]}.0')
                        lines.append(f"{name}_sum{{{base}}} {repr(float(h[-2]))}")
                        lines.append(f"{name}_count{{{base}}} {h[-1]}.0")
                    continue
                values = self.counters[name] or ({(): 0.0} if not names else {})
                for labels, v in sorted(values.items()):
                    lab = ",".join(f'{k}="{_escape(x)}"' for k, x in zip(names, labels))
                    lines.append(f"{name}{{{lab}}} {_fmt(v)}" if lab else f"{name} {_fmt(v)}")
        return ("\n".join(lines) + "\n").encode()


class _Client:
    """prometheus_client with a private registry (so tests and apps never collide)."""

    def __init__(self) -> None:
        import prometheus_client as pc

        try:
            pc.disable_created_metrics()  # the *_created series only clutter a service's page
        except AttributeError:  # pragma: no cover - older prometheus_client
            pass
        self._pc = pc
        self.registry = pc.CollectorRegistry(auto_describe=True)
        self.metrics = {}
        for name, (kind, doc) in _HELP.items():
            labels = _LABELS[name]
            short = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
            if kind == "counter":
                self.metrics[name] = pc.Counter(short, doc, labels, registry=self.registry)
            elif kind == "gauge":
                self.metrics[name] = pc.Gauge(name, doc, labels, registry=self.registry)
            else:
                self.metrics[name] = pc.Histogram(name, doc, labels, buckets=BUCKETS, registry=self.registry)

    def _child(self, name: str, labels: tuple):
        m = self.metrics[name]
        return m.labels(*labels) if labels else m

    def inc(self, name: str, labels: tuple = (), by: float = 1.0) -> None:
        self._child(name, labels).inc(by)

    def set(self, name: str, value: float, labels: tuple = ()) -> None:
        self._child(name, labels).set(value)

    def observe(self, labels: tuple, seconds: float) -> None:
        self._child("aml_request_latency_seconds", labels).observe(seconds)

    def render(self) -> bytes:
        return self._pc.generate_latest(self.registry)


class Metrics:
    """The service's metrics; ``plain=True`` forces the hand-written exposition."""

    def __init__(self, plain: bool | None = None):
        impl = None
        if not plain:
            try:
                impl = _Client()
            except ImportError:
                impl = None
        self.impl = impl or _Plain()
        self.backend = "prometheus_client" if isinstance(self.impl, _Client) else "plain"
        self.impl.set("aml_ready", 0.0)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.impl.inc("aml_requests_total", (endpoint, str(status)))
        self.impl.observe((endpoint,), seconds)

    def decision(self, decision: dict) -> None:
        if decision.get("replayed"):
            self.impl.inc("aml_replays_total")
            return
        self.impl.inc("aml_decisions_total", (decision["decision"],))
        if decision["alert"]:
            self.impl.inc("aml_alerts_total", (str(decision["jurisdiction"]),))

    def error(self, kind: str) -> None:
        self.impl.inc("aml_errors_total", (kind,))

    def ready(self, value: bool) -> None:
        self.impl.set("aml_ready", 1.0 if value else 0.0)

    def render(self) -> tuple[bytes, str]:
        return self.impl.render(), CONTENT_TYPE
