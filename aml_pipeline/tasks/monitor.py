"""``task=monitor``: is the deployed bundle still seeing the world it was trained on?

A window of scored events (``input=``: ``task=score`` output, the service's decision log,
the streaming scorer's decisions) is compared with the reference histograms the bundle
kept from its validation window (``reference.json``): drift per feature and of the score,
alert volume per day and per jurisdiction, given labels, performance over the events
whose label had ``monitor.label_delay`` to arrive, and, when the log carries a shadow
bundle's decisions (``deploy.shadow``), how far the two agree. Writes ``reports/monitor/``
(monitor.json, plots, monitor.html). When a judged column crosses an alert level the
command exits with code 3 and one line naming the columns, so a scheduler can act;
``monitor.fail_on_drift=false`` leaves only the flag in monitor.json. docs/monitoring.md.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf

from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.monitoring.agreement import agreement
from aml_pipeline.monitoring.drift import Levels, drift_report, levels_of
from aml_pipeline.monitoring.histograms import REFERENCE_BINS
from aml_pipeline.monitoring.labels import performance, read_labels
from aml_pipeline.monitoring.report import write_report
from aml_pipeline.monitoring.volume import alert_volume
from aml_pipeline.monitoring.window import read_window
from aml_pipeline.progress import status, table
from aml_pipeline.registry import resolve_bundle
from aml_pipeline.timeutil import config_duration, config_time

#: Exit code when drift crosses an alert level (2 stays "the command was wrong").
DRIFT_EXIT = 3


class DriftDetected(UserError):
    """Drift crossed a configured alert level: one line, exit code 3."""

    exit_code = DRIFT_EXIT


def check(cfg: DictConfig) -> Levels:
    m = cfg.monitor
    if int(m.min_events) < 1:
        raise ConfigError(f"monitor.min_events must be >= 1 (got {m.min_events})")
    if not 2 <= int(m.bins) <= REFERENCE_BINS:
        raise ConfigError(f"monitor.bins must be between 2 and {REFERENCE_BINS} (the reference keeps {REFERENCE_BINS} "
                          f"quantile bins; got {m.bins})")
    config_duration(m.label_delay, "monitor.label_delay", allow_zero=True)
    if not cfg.bundle:
        raise ConfigError("bundle: task=monitor needs the bundle that scored the window (bundle=models:/aml-scorer@challenger "
                          "or a folder)")
    if not cfg.input:
        raise ConfigError("input: task=monitor needs the scored window (task=score output, deploy.decision_log or the "
                          "stream's decisions folder)")
    return levels_of(m)


def monitor(cfg: DictConfig) -> dict:
    """Compute and write the report; returns it (with ``outputs``) whatever it found."""
    start = time.perf_counter()
    m = cfg.monitor
    levels = check(cfg)
    with status(f"monitor: loading bundle {cfg.bundle}"):
        bundle = resolve_bundle(cfg.bundle, cfg)
    reference = bundle.reference
    if reference is None:
        raise UserError(f"bundle {cfg.bundle} has no monitoring reference (reference.json): it predates task=monitor; "
                        f"retrain it with task=train")
    unknown = [c for c in m.exclude if c != "score" and c not in reference["columns"]]
    if unknown:
        raise ConfigError(f"monitor.exclude: {unknown[0]!r} is not a monitored column; allowed: score, "
                          f"{', '.join(list(reference['columns'])[:8])}, ... (the bundle's feature columns)")
    window = read_window(cfg.input, bundle.feature_columns(), m.start, m.end)
    if window.height == 0:
        raise UserError(f"input={cfg.input}: no scored events in the window (monitor.start={m.start}, monitor.end={m.end})")
    judged = window.height >= int(m.min_events)  # a handful of events makes noisy histograms, not drift
    exclude = list(m.exclude) if judged else ["score", *reference["columns"]]
    with status(f"monitor: {window.height:,} events against the reference"):
        drift = drift_report(reference, window, levels, int(m.bins), exclude)
        volume = alert_volume(window, reference)
    perf = None
    if m.labels:
        as_of = config_time(m.as_of, "monitor.as_of") if m.as_of else window["event_time"].max()
        perf = performance(window, read_labels(m.labels), as_of, config_duration(m.label_delay, "monitor.label_delay", allow_zero=True))
    drifted = [*(["score"] if drift["score"]["status"] == "alert" else []), *drift["drifted_columns"]]
    report = {
        "judged": judged, "drift_detected": drift["drift"], "drifted": drifted, "warned": drift["warned_columns"],
        "exit_code": DRIFT_EXIT if drift["drift"] and m.fail_on_drift else 0,
        "bundle": bundle.trace, "input": str(cfg.input),
        "window": {"start": window["event_time"].min().isoformat(), "end": window["event_time"].max().isoformat(),
                   "events": window.height},
        "reference": reference["window"],
        "config": OmegaConf.to_container(m, resolve=True),
        "drift": drift, "alerts": volume, "performance": perf,
        "shadow": agreement(window),
    }
    outputs = write_report(m.output, report, levels.levels["psi"])
    _print(report, outputs, time.perf_counter() - start)
    return {**report, "outputs": outputs}


def _names(items: list[str], k: int = 6) -> str:
    return ", ".join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")


def _print(report: dict, outputs: dict, secs: float) -> None:
    d, v, p = report["drift"], report["alerts"], report["performance"]
    rows = [("window", f"{report['window']['start'][:19]} to {report['window']['end'][:19]}, {report['window']['events']:,} events"),
            ("drift", ("yes: " + _names(report["drifted"])) if report["drift_detected"] else "no" if report["judged"]
             else f"not judged: {report['window']['events']:,} events < monitor.min_events={report['config']['min_events']}"),
            ("warnings", _names(report["warned"]) or "none"),
            ("score PSI / JS", f"{d['score']['psi']:.4f} / {d['score']['js']:.4f}"),
            ("largest PSI", ", ".join(f"{n} {x:.3f}" for n, x in d["top_psi"][:3])),
            ("alerts", f"{v['alerts']:,} ({v['alert_rate']:.3%}; reference "
                       f"{'n/a' if v['reference_alert_rate'] is None else format(v['reference_alert_rate'], '.3%')})")]
    if p:
        prec = "n/a" if p["precision"] is None else f"{p['precision']:.4f}"
        rows.append(("mature labels", f"{p['mature_events']:,} events, precision {prec}, "
                                      f"{p['immature_share']:.1%} of the window still immature"))
    s = report["shadow"]
    if s:
        overlap = "n/a" if s["alert_overlap"] is None else f"{s['alert_overlap']:.2f}"
        rho = "n/a" if s["rank_correlation"] is None else f"{s['rank_correlation']:.4f}"
        rows.append(("shadow", f"version {', '.join(s['shadow_versions']) or '?'}: alert overlap {overlap} "
                               f"({s['both']:,} both, {s['live_only']:,} live only, {s['shadow_only']:,} shadow only), "
                               f"rank correlation {rho}"))
    rows += [("report", outputs["html"]), ("took", f"{secs:.1f}s")]
    table("monitor", rows)


def run(cfg: DictConfig) -> dict:
    report = monitor(cfg)
    if report["exit_code"] == DRIFT_EXIT:
        worst = {n: (report["drift"]["score"] if n == "score" else report["drift"]["columns"][n]) for n in report["drifted"]}
        named = _names([f"{n} ({'/'.join(r['reasons'])})" for n, r in worst.items()], 5)
        raise DriftDetected(f"drift: {named} crossed an alert level; see {report['outputs']['html']}")
    return report
