"""Alerts into cases: one case per subject account over a period.

An alert joins its subject account's active case (open, escalated or waiting for a SAR's
approval) when it comes no later than ``period`` after that case's latest alert;
otherwise (no active case, or a longer gap) it opens a new case. A closed case never
reopens: an alert after a decision opens a new case. The subject is the sending account
by default (``subject="dst_account"`` groups by receiver).

Ingestion is idempotent by event id: an alert already in the database is skipped, so a
score file or a stream's alert folder can be ingested again safely. A case keeps the
queue's sort keys (highest score, number of alerts, total amount) and the jurisdiction
and typology hint of its highest-scoring alert on its own row.

Reasons are what the scorer wrote with the alert (a ``reasons`` column); for alerts from
an older scorer without one, they are written at ingestion from the alert's own
``top_features`` (the values the model saw then, never a recomputation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Optional

import polars as pl
import sqlalchemy as sa

from aml_pipeline.cases.audit import SYSTEM
from aml_pipeline.cases.db import CaseDB, write_lock
from aml_pipeline.cases.errors import CaseError
from aml_pipeline.cases.models import ACTIVE_STATUSES, Alert, AuditEvent, Case
from aml_pipeline.cases.views import IngestResult
from aml_pipeline.features.reasons import reasons_and_hint
from aml_pipeline.timeutil import as_utc, config_duration, utcnow

REQUIRED = ("event_id", "event_time", "score")
#: Columns of a decision kept on the alert row itself.
ALERT_COLUMNS = ("event_id", "event_time", "score", "threshold", "jurisdiction", "amount", "currency", "channel",
                 "model_name", "model_version", "run_id", "config_hash", "bundle_hash", "top_features", "reasons",
                 "typology_hint")
#: Columns of the event kept in the alert's ``details`` (never the label, typology or
#: instance id a training source may carry: the analyst decides, the data does not tell).
DETAIL_COLUMNS = ("src_account", "dst_account", "src_bank", "dst_bank", "src_country", "dst_country", "merchant",
                  "region",
                  # the streaming scorer's: its alert id, where it read the event, when it scored it, and for
                  # an alert over the alert budget, why it was deferred
                  "alert_id", "position", "scored_at", "deferred_reason", "budget_key", "budget_value")
SUBJECTS = ("src_account", "dst_account")
_CHUNK = 500  # ids per IN (...) list: well under SQLite's parameter limit
#: A new case's columns, written from its draft.
CASE_FIELDS = ("subject_account", "status", "jurisdiction", "typology_hint", "max_score", "alert_count", "total_amount",
               "first_alert_at", "last_alert_at", "created_at", "updated_at")


def parse_period(period: Any) -> Optional[timedelta]:
    """``cases.period``: a timedelta, a duration (30d, 12h, 1d12h), or None/"none" (no limit)."""
    if period is None or (isinstance(period, str) and period.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(period, timedelta):
        return period
    return config_duration(period, "cases.period")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _utc(t: Any) -> datetime:
    if isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if not isinstance(t, datetime):
        raise CaseError(f"event_time {t!r} is not an instant")
    return as_utc(t)


def _rows(alerts: Any, subject: str) -> list[dict]:
    """The alert rows as dicts with only the columns the database keeps."""
    if isinstance(alerts, pl.LazyFrame):
        alerts = alerts.collect()
    if isinstance(alerts, pl.DataFrame):
        frame = alerts
        if "alert" in frame.columns:
            frame = frame.filter(pl.col("alert").fill_null(False))
        missing = [c for c in (*REQUIRED, subject) if c not in frame.columns]
        if missing:
            raise CaseError(f"alerts: no column {missing[0]!r}; an alert needs {', '.join((*REQUIRED, subject))} "
                            f"(task=score output carries them)")
        keep = [c for c in dict.fromkeys((*ALERT_COLUMNS, *DETAIL_COLUMNS, subject)) if c in frame.columns]
        return frame.select(keep).to_dicts()
    rows = []
    for r in alerts:
        r = dict(r) if isinstance(r, Mapping) else dict(r._asdict())
        if "alert" in r and not r["alert"]:
            continue
        missing = [c for c in (*REQUIRED, subject) if r.get(c) is None]
        if missing:
            raise CaseError(f"alert {r.get('event_id')!r}: no {missing[0]!r}; an alert needs "
                            f"{', '.join((*REQUIRED, subject))}")
        rows.append(r)
    return rows


def _reasons(row: dict) -> tuple[list[str], Optional[str]]:
    given = row.get("reasons")
    hint = row.get("typology_hint")
    if given is not None and hint is not None:
        return list(given), hint
    words, guessed = reasons_and_hint(row.get("top_features") or [])
    return (list(given) if given is not None else words), (hint if hint is not None else guessed)


@dataclass
class _Touched:
    case: Any  # an ORM Case, or a draft of a new one
    before: Optional[dict]  # None for a case opened by this ingestion
    added: int = 0


def _summary(c: Case) -> dict:
    return {"alert_count": c.alert_count, "max_score": c.max_score, "total_amount": c.total_amount,
            "last_alert_at": c.last_alert_at.isoformat() if c.last_alert_at else None}


def ingest_alerts(db: CaseDB, alerts: pl.DataFrame | Iterable[Mapping], *, period: Any = "30d",
                  subject: str = "src_account", source: Optional[str] = None, actor: str = SYSTEM) -> IngestResult:
    """Add alerts to the case database, grouped into cases (see the module's docstring).

    ``alerts``: a polars frame (``task=score`` output, the stream's alert files; rows with
    ``alert`` false are ignored) or dicts with at least event_id, event_time, score and
    the subject column. ``period``: how long after a case's latest alert a new alert
    still joins it (a duration, or None for no limit). ``source`` is stored with each
    alert (the file or stream it came from); ``actor`` names the ingestion in the audit
    trail. One transaction: all of it lands, or none.
    """
    if subject not in SUBJECTS:
        raise CaseError(f"cases.subject={subject!r} is not one of {', '.join(SUBJECTS)}")
    gap = parse_period(period)
    rows = _rows(alerts, subject)
    read = len(rows)
    seen: set[str] = set()
    unique = []
    for r in rows:
        eid = str(r["event_id"])
        if eid not in seen:
            seen.add(eid)
            r["event_id"], r["event_time"] = eid, _utc(r["event_time"])
            unique.append(r)
    unique.sort(key=lambda r: (r["event_time"], r["event_id"]))
    now = utcnow()
    with db.session() as s:
        write_lock(s)  # SQLite: before the reads below, so a decision cannot slip in between
        existing: set[str] = set()
        ids = [r["event_id"] for r in unique]
        for i in range(0, len(ids), _CHUNK):
            existing.update(s.scalars(sa.select(Alert.event_id).where(Alert.event_id.in_(ids[i:i + _CHUNK]))))
        fresh = [r for r in unique if r["event_id"] not in existing]
        accounts = sorted({str(r[subject]) for r in fresh})
        active: dict[str, Case] = {}
        for i in range(0, len(accounts), _CHUNK):
            q = (sa.select(Case).where(Case.subject_account.in_(accounts[i:i + _CHUNK]),
                                       Case.status.in_(ACTIVE_STATUSES)).order_by(Case.last_alert_at, Case.id)
                 .with_for_update(of=Case))
            for c in s.scalars(q):
                active[c.subject_account] = c  # the latest active case per account
        touched: dict[int, _Touched] = {}
        alert_rows = []
        other = "dst_account" if subject == "src_account" else "src_account"
        for r in fresh:
            acct, t, score = str(r[subject]), r["event_time"], float(r["score"])
            amount = _clean(r.get("amount"))
            reasons, hint = _reasons(r)
            c = active.get(acct)
            if c is None or (gap is not None and t - c.last_alert_at > gap):
                # a plain draft, inserted below in one statement (an ORM object per case costs ~10x)
                c = SimpleNamespace(id=None, subject_account=acct, status="open", jurisdiction=r.get("jurisdiction"),
                                    typology_hint=hint, max_score=score, alert_count=0, total_amount=0.0,
                                    first_alert_at=t, last_alert_at=t, created_at=now, updated_at=now)
                active[acct] = c
                touched[id(c)] = _Touched(c, None)
            elif id(c) not in touched:
                touched[id(c)] = _Touched(c, _summary(c))
            if score > c.max_score or c.alert_count == 0:
                c.max_score, c.jurisdiction, c.typology_hint = score, r.get("jurisdiction"), hint
            c.alert_count += 1
            c.total_amount += float(amount or 0.0)
            c.first_alert_at, c.last_alert_at = min(c.first_alert_at, t), max(c.last_alert_at, t)
            c.updated_at = now
            touched[id(c)].added += 1
            alert_rows.append((c, {
                "event_id": r["event_id"], "event_time": t, "subject_account": acct,
                "counterparty": None if r.get(other) is None else str(r[other]),
                "amount": amount, "currency": r.get("currency"), "channel": r.get("channel"),
                "jurisdiction": r.get("jurisdiction"), "score": score, "threshold": _clean(r.get("threshold")),
                "model_name": r.get("model_name"), "model_version": r.get("model_version"), "run_id": r.get("run_id"),
                "config_hash": r.get("config_hash"), "bundle_hash": r.get("bundle_hash"),
                "top_features": [{k: _clean(v) for k, v in f.items()} for f in (r.get("top_features") or [])],
                "reasons": reasons, "typology_hint": hint,
                "details": {k: r[k] for k in DETAIL_COLUMNS if r.get(k) is not None},
                "source": source, "ingested_at": now,
            }))
        s.flush()  # the existing cases' new counts
        conn = s.connection()
        drafts = [t.case for t in touched.values() if t.before is None]
        if drafts:
            table = Case.__table__
            ids = conn.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True),
                               [{k: getattr(d, k) for k in CASE_FIELDS} for d in drafts]).scalars().all()
            for d, new_id in zip(drafts, ids):
                d.id = new_id
        if alert_rows:
            conn.execute(Alert.__table__.insert(), [{**row, "case_id": c.id} for c, row in alert_rows])
        audit = []
        for t in touched.values():
            c = t.case
            after = {**_summary(c), "subject_account": c.subject_account, "alerts_added": t.added}
            audit.append({"at": now, "user_id": None, "username": actor, "case_id": c.id, "entity": "case",
                          "entity_id": str(c.id), "action": "case_opened" if t.before is None else "alerts_added",
                          "before": t.before, "after": after, "note": source})
        if audit:
            conn.execute(AuditEvent.__table__.insert(), audit)
        opened = [t.case.id for t in touched.values() if t.before is None]
        updated = [t.case.id for t in touched.values() if t.before is not None]
        return IngestResult(alerts_read=read, alerts_added=len(alert_rows), alerts_skipped=read - len(alert_rows),
                            cases_opened=len(opened), cases_updated=len(updated), case_ids=sorted(opened + updated))
