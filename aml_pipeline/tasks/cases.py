"""``task=cases``: alerts into the case database, grouped into one case per account.

``input=`` names the alerts (or ``cases.kafka.bootstrap_servers`` the streaming scorer's
Kafka topics): ``task=score``'s parquet (the default:
``data/scores/scores.parquet``), ``task=evaluate``'s ``data/scores/test.parquet``, the
streaming scorer's output folder (its ``alerts/`` and ``deferred/`` JSON lines) or the
online service's decision log. Scores that carry no accounts are joined with
``cases.events`` (the canonical events they were scored from). Ingestion is idempotent
by event id; on a folder, ``cases.follow=true`` keeps watching it for new parts. The
database is ``cases.db`` (SQLite by default, PostgreSQL by URL), created and migrated on
open. docs/cases.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

# The workbench extra (SQLAlchemy, Alembic): task=cases, labels and users load this module
# only after tasks.TASK_EXTRAS checked it.
from aml_pipeline.cases import ingest_alerts, list_cases, open_db
from aml_pipeline.cases.inputs import alert_files, jsonl_rows, read_parquet_alerts
from aml_pipeline.cases.kafka_input import consume
from aml_pipeline.config import option_value
from aml_pipeline.errors import UserError
from aml_pipeline.progress import status, table
from aml_pipeline.layout import Layout


def open_case_db(cfg: DictConfig):
    """The configured case database."""
    return open_db(cfg.cases.db)


def _ingest_rows(db, rows, cfg, source: str):
    return ingest_alerts(db, rows, period=cfg.cases.period, subject=str(getattr(cfg.cases.subject, "value",
                                                                                 cfg.cases.subject)),
                         source=source, actor="task=cases")


def _add(total: dict, res) -> None:
    for k in ("alerts_read", "alerts_added", "alerts_skipped", "cases_opened", "cases_updated"):
        total[k] = total.get(k, 0) + getattr(res, k)


def ingest_path(db, cfg: DictConfig, path: Path, seen: dict[Path, tuple[float, int]] | None = None) -> dict:
    """Ingest one input (file or folder); with ``seen``, only folder files new or changed since."""
    subject = str(option_value(cfg.cases.subject))
    total: dict = {}
    if path.is_dir():
        for f in alert_files(path):
            st = f.stat()
            stamp = (st.st_mtime, st.st_size)
            if seen is not None and seen.get(f) == stamp:
                continue
            _add(total, _ingest_rows(db, jsonl_rows(f), cfg, str(f)))
            if seen is not None:
                seen[f] = stamp
    elif path.suffix == ".parquet":
        _add(total, _ingest_rows(db, read_parquet_alerts(path, cfg.cases.events, subject), cfg, str(path)))
    else:
        _add(total, _ingest_rows(db, jsonl_rows(path), cfg, str(path)))
    return total


def run_kafka(cfg: DictConfig, db) -> tuple[dict, str]:
    """Ingest from the streaming scorer's Kafka topics (cases.kafka)."""
    k = cfg.cases.kafka
    total: dict = {}

    def on_rows(rows, source):
        res = _ingest_rows(db, rows, cfg, source)
        _add(total, res)
        if cfg.cases.follow:
            print(f"cases: +{res.alerts_added:,} alerts, {res.cases_opened:,} cases opened, "
                  f"{res.cases_updated:,} updated", flush=True)

    counts = consume(k.bootstrap_servers, list(k.topics), k.group_id, on_rows, follow=bool(cfg.cases.follow),
                     poll_seconds=float(cfg.cases.poll_seconds), max_polls=cfg.cases.max_polls,
                     idle_seconds=float(k.idle_seconds), config=dict(k.config or {}))
    total["kafka_records"] = counts["records"]
    return total, f"kafka {k.bootstrap_servers} topics {', '.join(k.topics)} (group {k.group_id})"


def run(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    if cfg.cases.kafka.bootstrap_servers:
        db = open_case_db(cfg)
        try:
            with status("cases: reading Kafka"):
                total, where = run_kafka(cfg, db)
            active = list_cases(db, page_size=1).total
        finally:
            db.close()
        return _report(total, where, active, db.url, time.perf_counter() - start)
    path = Path(cfg.input) if cfg.input else Layout.of(cfg).data_dir / "scores" / "scores.parquet"
    if not path.exists():
        raise UserError(f"input={path}: no such file or folder (task=score's parquet, the stream's output folder or "
                        f"a decision log)")
    follow = bool(cfg.cases.follow)
    if follow and not path.is_dir():
        raise UserError(f"cases.follow=true needs a folder to watch (input={path} is a file)")
    db = open_case_db(cfg)
    try:
        seen: dict = {}
        with status(f"cases: ingesting {path} into {db.url}"):
            total = ingest_path(db, cfg, path, seen)
        polls, max_polls = 0, cfg.cases.max_polls
        while follow and (max_polls is None or polls < int(max_polls)):
            time.sleep(float(cfg.cases.poll_seconds))
            polls += 1
            new = ingest_path(db, cfg, path, seen)
            if new.get("alerts_read"):
                _add_dict(total, new)
                print(f"cases: +{new['alerts_added']:,} alerts, {new['cases_opened']:,} cases opened, "
                      f"{new['cases_updated']:,} updated", flush=True)
        active = list_cases(db, page_size=1).total
    finally:
        db.close()
    return _report(total, str(path), active, db.url, time.perf_counter() - start)


def _report(total: dict, where: str, active: int, url: str, secs: float) -> dict:
    table("cases", [
        ("input", where),
        ("alerts", f"{total.get('alerts_added', 0):,} added, {total.get('alerts_skipped', 0):,} already there "
                   f"(of {total.get('alerts_read', 0):,} read)"),
        ("cases", f"{total.get('cases_opened', 0):,} opened, {total.get('cases_updated', 0):,} updated; "
                  f"{active:,} active in the database"),
        ("database", url),
        ("took", f"{secs:.1f}s"),
    ])
    return {**total, "active_cases": active, "db": url}


def _add_dict(total: dict, new: dict) -> None:
    for k, v in new.items():
        total[k] = total.get(k, 0) + v
