"""Promotion: move ``champion`` to the challenger only when it passes the gate on fresh data.

Why: evaluation registers every trained bundle and points ``challenger`` at it; what serves
(``models:/aml-scorer@champion``) must change only after the new version has shown, on the
same labelled events as the version in production, that it ranks as well, raises about as
many alerts and still meets each jurisdiction's precision target. Both versions are
re-scored here on one window later than either's training and validation windows, each
with its own feature plan and thresholds, so the comparison is like for like and never
in-sample.

Every attempt, passed or blocked, leaves a record (both versions, the figures, every check,
who and when) as an MLflow run and tags on the versions; the task also writes it to
``reports/promote.json``.
"""

from __future__ import annotations

import getpass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import polars as pl
from omegaconf import DictConfig, OmegaConf

from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.lifecycle.gate import figures, judge, precision_targets
from aml_pipeline.lineage import git_commit
from aml_pipeline.registry import alias_version, log_record, resolve_bundle, set_alias


class PromotionBlocked(UserError):
    """The challenger failed the gate: the alias did not move (exit code 3, unlike config errors' 2)."""

    exit_code = 3


def check_config(p: DictConfig) -> None:
    """One-line errors naming the key, before anything is loaded."""
    for key in ("challenger", "champion"):
        if not str(p[key] or "").strip():
            raise ConfigError(f"promote.{key}: must name a registered-model alias (e.g. {key})")
    if p.challenger == p.champion:
        raise ConfigError(f"promote.challenger and promote.champion are both {p.champion!r}: they must differ")
    for key in ("pr_auc_epsilon", "alert_volume_tolerance", "precision_slack"):
        if not 0.0 <= float(p[key]) <= 1.0:
            raise ConfigError(f"promote.{key}={p[key]}: must be in [0, 1]")
    if int(p.min_alerts) < 0:
        raise ConfigError(f"promote.min_alerts={p.min_alerts}: must be >= 0")


def _time(text: str, key: str) -> datetime:
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{key}={text!r}: not an ISO 8601 time (e.g. 2025-02-18T00:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def window_start(cfg: DictConfig, bundles: dict[str, Any]) -> datetime:
    """The first judged instant: promote.window_start, else the latest of the bundles' test windows.

    A window reaching into a bundle's training or validation window would judge it on events
    it was fitted or tuned on, so it is refused."""
    starts = {role: _time(b.lineage["test_start"], "test_start") for role, b in bundles.items() if b.lineage.get("test_start")}
    if cfg.promote.window_start:
        start = _time(cfg.promote.window_start, "promote.window_start")
        for role, s in starts.items():
            if start < s:
                raise ConfigError(f"promote.window_start={cfg.promote.window_start}: earlier than the {role}'s test window "
                                  f"({s.isoformat()}); its scores there would be in-sample")
        return start
    if len(starts) < len(bundles):
        missing = ", ".join(r for r in bundles if r not in starts)
        raise ConfigError(f"promote.window_start: the {missing} bundle does not record its test window (trained before "
                          f"it was recorded); set promote.window_start=<ISO time after its validation window>")
    return max(starts.values())


def load_events(cfg: DictConfig, default: Path) -> tuple[pl.DataFrame, str]:
    """The labelled events (canonical schema): input=<parquet>, else the validated layer."""
    path = Path(cfg.input) if cfg.input else default
    if not path.is_file():
        raise UserError(f"input={path}: no such file (a parquet file in the canonical schema with labels, "
                        f"e.g. data/validated/transactions.parquet)")
    events = pl.read_parquet(path)
    if "label" not in events.columns:
        raise UserError(f"input={path}: no label column; the gate compares models on labelled events")
    return events.sort("event_time", "event_id"), str(path)


def rescore(bundle, events: pl.DataFrame, start: datetime) -> pl.DataFrame:
    """The bundle's decisions on events from ``start`` on, earlier events as history."""
    t = pl.lit(start).cast(events.schema["event_time"])
    window = events.filter(pl.col("event_time") >= t)
    history = events.filter(pl.col("event_time") < t)
    decisions = bundle.score(window, history=history if history.height else None, explain="none")
    return decisions.select("event_id", "event_time", "score", "jurisdiction").join(window.select("event_id", "label"), on="event_id")


def _version_block(role: str, alias: str, info: dict, bundle, figs: dict | None) -> dict[str, Any]:
    return {"role": role, "alias": alias, "version": info["version"], "run_id": info["run_id"],
            "bundle_sha256": bundle.bundle_hash, "config_hash": bundle.lineage.get("config_hash"),
            "test_start": bundle.lineage.get("test_start"), "figures": figs}


#: How the versions are re-scored: (bundles by role, the labelled events, their file, the
#: window's start) -> each role's decisions on the window (event_id, event_time, score,
#: jurisdiction, label). The engine's task chooses it (polars: :func:`rescore_all`).
Rescorer = Callable[[dict[str, Any], pl.DataFrame, str, datetime], dict[str, pl.DataFrame]]


def rescore_all(bundles: dict[str, Any], events: pl.DataFrame, source: str, start: datetime) -> dict[str, pl.DataFrame]:
    """Each bundle's decisions on the window, in process (:func:`rescore`)."""
    return {role: rescore(b, events, start) for role, b in bundles.items()}


def promote(cfg: DictConfig, default_input: Path, rescorer: Rescorer = rescore_all) -> dict[str, Any]:
    """Gate the challenger against the champion; move the alias when it passes. Returns the record."""
    p = cfg.promote
    check_config(p)
    if not cfg.mlflow.enabled:
        raise ConfigError("mlflow.enabled=false: task=promote moves registered-model aliases, it needs MLflow")
    name = cfg.mlflow.registered_model
    ch_info = alias_version(cfg, p.challenger)
    if ch_info is None:
        raise UserError(f"models:/{name}@{p.challenger}: no such alias (task=evaluate sets it; "
                        f"promote.challenger names another)")
    champ_info = alias_version(cfg, p.champion)
    now = datetime.now(timezone.utc)
    record: dict[str, Any] = {"registered_model": name, "at": now.isoformat(timespec="seconds"),
                              "by": _user(), "git_commit": git_commit(), "gate_config": _plain(p)}
    if champ_info is not None and champ_info["version"] == ch_info["version"]:
        return {**record, "decision": "unchanged", "reason": f"version {ch_info['version']} is already {p.champion}",
                "challenger": {"version": ch_info["version"]}, "champion": {"version": champ_info["version"]},
                "champion_before": champ_info["version"], "champion_after": champ_info["version"], "gate": None}
    bundles = {"challenger": resolve_bundle(f"models:/{name}/{ch_info['version']}", cfg)}
    if champ_info is not None:
        bundles["champion"] = resolve_bundle(f"models:/{name}/{champ_info['version']}", cfg)
    start = window_start(cfg, bundles)
    events, source = load_events(cfg, default_input)
    scored = rescorer(bundles, events, source, start)
    judged = {role: s.filter(pl.col("label").is_not_null()) for role, s in scored.items()}
    lab = judged["challenger"]
    if lab.height == 0 or int(lab["label"].sum()) == 0:
        raise UserError(f"input={source}: no labelled positive event from {start.isoformat()} on; the gate needs "
                        f"a labelled window later than both models' training (promote.window_start, input=)")
    figs = {role: figures(d["label"].to_numpy(), d["score"].to_numpy(), d["jurisdiction"].to_numpy(),
                          bundles[role].thresholds) for role, d in judged.items()}
    targets = precision_targets(bundles["challenger"].thresholds)
    gate = judge(figs["challenger"], figs.get("champion"), targets, p)
    before = champ_info["version"] if champ_info else None
    moves = gate["passed"] and not p.dry_run
    decision = ("promoted" if moves else "passed (dry run)") if gate["passed"] else "blocked"
    times = scored["challenger"]["event_time"]
    record.update({
        "decision": decision,
        "reason": gate["reason"],
        "challenger": _version_block("challenger", p.challenger, ch_info, bundles["challenger"], figs["challenger"]),
        "champion": (_version_block("champion", p.champion, champ_info, bundles["champion"], figs["champion"])
                     if champ_info else None),
        "champion_before": before,
        "champion_after": ch_info["version"] if moves else before,
        "window": {"input": source, "start": start.isoformat(), "end": times.max().isoformat() if times.len() else None,
                   "events": scored["challenger"].height, "labelled": lab.height, "positives": int(lab["label"].sum())},
        "gate": gate,
    })
    record["mlflow_run_id"] = log_record(cfg, f"promote v{ch_info['version']}", record, _metrics(figs), _tags(record),
                                         "promotion.json")
    if moves:
        set_alias(cfg, p.champion, ch_info["version"],
                  {"promoted_at": record["at"], "promoted_by": record["by"], "promotion_run_id": record["mlflow_run_id"]})
    else:
        set_alias(cfg, p.challenger, ch_info["version"],
                  {"promotion": decision, "promotion_run_id": record["mlflow_run_id"]})
    return record


def _metrics(figs: dict[str, dict]) -> dict[str, float]:
    out = {}
    for role, f in figs.items():
        for k in ("pr_auc", "roc_auc", "alerts", "precision", "recall"):
            if f.get(k) is not None:
                out[f"{role}_{k}"] = f[k]
    return out


def _tags(record: dict) -> dict[str, str]:
    ch, champ = record["challenger"], record["champion"]
    none = lambda v: "none" if v is None else v  # noqa: E731
    return {"aml.record": "promotion", "promotion.decision": record["decision"], "promotion.by": record["by"],
            "promotion.challenger_version": ch["version"], "promotion.champion_before": none(record["champion_before"]),
            "promotion.champion_after": none(record["champion_after"]), "promotion.reason": (record["reason"] or "")[:4000],
            **({"promotion.champion_version": champ["version"]} if champ else {})}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): say so rather than guess
        return "unknown"


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
