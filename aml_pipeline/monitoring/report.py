"""The monitor's outputs: monitor.json, four plots and one self-contained HTML page.

The page inlines its images (base64) and styles, so it can be mailed or attached to a
ticket as one file and still show everything. Plots use matplotlib's object API without
pyplot (no global state, no display needed).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from aml_pipeline.evaluation.report import new_figure, plots_installed, write_metrics_json

PLOTS = {"psi": "psi_per_feature.png", "score": "score_distribution.png", "alert_rate": "alert_rate.png",
         "precision": "precision_over_time.png"}
COLOURS = {"ok": "#4c9a2a", "warn": "#e0a000", "alert": "#c0392b", "excluded": "#999999"}


def _figure(width=8.0, height=4.5):
    return new_figure(width, height)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _message(path: Path, title: str, message: str) -> Path:
    fig, ax = _figure(6.0, 2.5)
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return _save(fig, path)


def plot_psi(path: Path, drift: dict, levels: tuple[float, float], top: int = 30) -> Path:
    """PSI of the score and of the columns with the largest PSI, coloured by status."""
    items = [("score", drift["score"])] + sorted(drift["columns"].items(), key=lambda kv: -np.nan_to_num(kv[1]["psi"]))[:top]
    items = items[::-1]
    fig, ax = _figure(8.0, max(3.0, 0.25 * len(items) + 1.2))
    ax.barh([n for n, _ in items], [r["psi"] for _, r in items], color=[COLOURS[r["status"]] for _, r in items])
    for level, style in zip(levels, (":", "--")):
        ax.axvline(level, color="black", linestyle=style, linewidth=1)
    ax.set_xlabel(f"PSI (warn {levels[0]:g}, alert {levels[1]:g})")
    ax.set_title(f"PSI per feature, the {min(top, len(drift['columns']))} largest, against the reference")
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def plot_score(path: Path, drift: dict) -> Path:
    """Shares of the reference and current scores per bin (the last bin: missing)."""
    h = drift["score"]["histogram"]
    ref, cur = np.asarray(h["reference"], float), np.asarray(h["current"], float)
    ref, cur = ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)
    labels = [f"≤{e:.3g}" if e is not None else "rest" for e in h["upper_edges"]] + ["missing"]
    x = np.arange(len(labels))
    fig, ax = _figure()
    ax.bar(x - 0.2, ref, 0.4, label="reference (validation window)", color="#7f8c8d")
    ax.bar(x + 0.2, cur, 0.4, label="current window", color="#2980b9")
    ax.set_xticks(x, labels, rotation=45, fontsize=7)
    ax.set_ylabel("share of events")
    ax.set_title(f"Score distribution (PSI {drift['score']['psi']:.3f}, JS {drift['score']['js']:.3f})")
    ax.legend()
    return _save(fig, path)


def plot_alert_rate(path: Path, volume: dict) -> Path:
    days = volume["per_day"]
    if not days:
        return _message(path, "Alert rate per day", "no events in the window")
    fig, ax = _figure()
    x = np.arange(len(days))
    ax.plot(x, [d["alert_rate"] for d in days], marker="o", label="alert rate")
    if volume.get("reference_alert_rate") is not None:
        ax.axhline(volume["reference_alert_rate"], color="#7f8c8d", linestyle="--", label="reference")
    ax.set_xticks(x, [d["day"] for d in days], rotation=45, fontsize=7)
    ax.set_ylabel("alerts / events")
    ax2 = ax.twinx()
    ax2.bar(x, [d["alerts"] for d in days], alpha=0.2, color="#c0392b", label="alerts")
    ax2.set_ylabel("alerts")
    ax.set_title("Alert rate per day")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_precision(path: Path, performance: dict | None) -> Path:
    if not performance:
        return _message(path, "Precision over time", "no labels given (monitor.labels)")
    days = performance["per_day"]
    fig, ax = _figure()
    x = np.arange(len(days))
    prec = [np.nan if d["precision"] is None else d["precision"] for d in days]
    ax.plot(x, prec, marker="o", label="precision of mature alerts")
    ax.bar(x, [d["mature_share"] for d in days], alpha=0.2, color="#7f8c8d", label="mature share of the day's events")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(x, [d["day"] for d in days], rotation=45, fontsize=7)
    ax.set_title(f"Precision over time, labels known by {performance['as_of'][:19]}")
    ax.legend()
    return _save(fig, path)


def _img(path: Path | None) -> str:
    if path is None:  # no plots extra: the page keeps its tables
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _f(x, pct=False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.2%}" if pct else f"{x:.4f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else html.escape(str(x))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status(s: str) -> str:
    return f'<span class="s" style="background:{COLOURS.get(s, "#999")}">{html.escape(s)}</span>'


def render_html(report: dict, plots: dict[str, Path]) -> str:
    d, v, p = report["drift"], report["alerts"], report.get("performance")
    verdict = ("DRIFT: " + ", ".join(html.escape(c) for c in report["drifted"])) if report["drift_detected"] else \
        "no drift" if report.get("judged", True) else "not judged: too few events (monitor.min_events)"
    rows = [[html.escape(n), r["kind"], _f(r["psi"]), _f(r["js"]), _f(r["missing_reference"], True),
             _f(r["missing_current"], True), _f(r["out_of_range"], True), _f(r["novelty"], True), _status(r["status"])]
            for n, r in [("score", d["score"]), *sorted(d["columns"].items(), key=lambda kv: -np.nan_to_num(kv[1]["psi"]))]]
    jur = [[html.escape(str(r["jurisdiction"])), _f(r["events"]), _f(r["alerts"]), _f(r["alert_rate"], True),
            _f(r["reference_alert_rate"], True)] for r in v["per_jurisdiction"]]
    perf = "<p>No labels given (<code>monitor.labels</code>).</p>"
    if p:
        perf = _table(["as of", "label delay", "events", "immature", "mature events", "positives", "alerts",
                       "precision", "recall", "PR-AUC"],
                      [[_f(p["as_of"][:19]), _f(report["config"]["label_delay"]), _f(p["events"]),
                        f"{_f(p['immature_events'])} ({_f(p['immature_share'], True)})", _f(p["mature_events"]),
                        _f(p["positives"]), _f(p["alerts"]), _f(p["precision"]), _f(p["recall"]), _f(p["pr_auc"])]])
    w = report["window"]
    s = report.get("shadow")
    shadow = "" if not s else "<h2>Shadow bundle</h2>" + _table(
        ["shadow version", "events", "both alert", "live only", "shadow only", "alert overlap", "decisions agree",
         "rank correlation"],
        [[_f(", ".join(s["shadow_versions"])), _f(s["events"]), _f(s["both"]), _f(s["live_only"]), _f(s["shadow_only"]),
          _f(s["alert_overlap"]), _f(s["decisions_agree"], True), _f(s["rank_correlation"])]])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>aml_pipeline monitor: {html.escape(verdict)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}} td:first-child{{text-align:left}}
.s{{color:white;padding:0 6px;border-radius:3px}} .verdict{{font-size:1.4em;font-weight:bold;
color:{COLOURS['alert'] if report['drift_detected'] else COLOURS['ok']}}} img{{max-width:100%}}</style></head><body>
<h1>Monitoring report</h1>
<p class="verdict">{verdict}</p>
<p>Bundle {html.escape(str(report['bundle']['model_name']))} version {html.escape(str(report['bundle']['model_version']))}
(sha256 {html.escape(str(report['bundle']['bundle_hash'])[:12])}); window {html.escape(str(w['start']))} to
{html.escape(str(w['end']))}, {w['events']:,} events; reference: validation window {html.escape(str(report['reference']['start']))}
to {html.escape(str(report['reference']['end']))}, {report['reference']['events']:,} events.</p>
<h2>Drift</h2>{_img(plots.get('psi'))}{_img(plots.get('score'))}
{_table(['column', 'kind', 'PSI', 'JS', 'missing (ref)', 'missing', 'out of range', 'new categories', 'status'], rows)}
<h2>Alerts</h2><p>{v['alerts']:,} alerts over {v['events']:,} events ({_f(v['alert_rate'], True)};
reference {_f(v['reference_alert_rate'], True)}).</p>{_img(plots.get('alert_rate'))}
{_table(['jurisdiction', 'events', 'alerts', 'alert rate', 'reference rate'], jur)}
<h2>Performance over mature labels</h2>{perf}{_img(plots.get('precision'))}
{shadow}
</body></html>
"""


def write_report(directory: str | Path, report: dict, levels: tuple[float, float]) -> dict[str, str]:
    """monitor.json, the four plots and monitor.html under ``directory`` (replaced file by file)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    plots = {}
    if plots_installed():
        plots = {"psi": plot_psi(d / PLOTS["psi"], report["drift"], levels),
                 "score": plot_score(d / PLOTS["score"], report["drift"]),
                 "alert_rate": plot_alert_rate(d / PLOTS["alert_rate"], report["alerts"]),
                 "precision": plot_precision(d / PLOTS["precision"], report.get("performance"))}
    json_path = write_metrics_json(d / "monitor.json", report)
    page = d / "monitor.html"
    page.write_text(render_html(report, plots))
    return {"json": str(json_path), "html": str(page), **{k: str(v) for k, v in plots.items()}}
