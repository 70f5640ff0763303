"""``task=workbench``: check the configuration, open the case database, serve the pages.

Start-up, in order; a failure before serving is one line and exit code 2: the durations,
the port, the database (migrated to the newest schema), the session key (never printed),
the transactions file. Then uvicorn serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

# The workbench extra: this module loads only for task=workbench, after tasks.TASK_EXTRAS
# checked it, so uvicorn, FastAPI (.app) and SQLAlchemy (cases) are imported at the top.
import uvicorn
from omegaconf import DictConfig

from aml_pipeline.cases import list_users, open_db
from aml_pipeline.errors import ConfigError
from aml_pipeline.serving.workers import check_port, has_module
from aml_pipeline.timeutil import config_duration as _duration
from aml_pipeline.workbench.app import Settings, create_app
from aml_pipeline.workbench.evidence import Transactions
from aml_pipeline.workbench.security import session_secret


def secret_path(cfg: DictConfig, db) -> Path:
    """workbench.secret_file, or beside a SQLite database, or under paths.reports_dir."""
    w = cfg.workbench
    if w.secret_file:
        return Path(w.secret_file)
    database = db.engine.url.database if db.dialect == "sqlite" else None
    if database and database != ":memory:":
        return Path(database).parent / "workbench.secret"
    return Path(cfg.paths.reports_dir) / "workbench.secret"


def refresh_statistics(db) -> None:
    """SQLite plans a query from the statistics ANALYZE keeps; without them it takes the
    status index for the queue even when nearly every case is open, and sorts them all
    (bench/workbench.py). PostgreSQL's autovacuum keeps its own statistics."""
    if db.dialect == "sqlite":
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def settings_of(cfg: DictConfig, secret: str):
    w = cfg.workbench
    if int(w.page_size) < 1 or int(w.page_size) > 500:
        raise ConfigError(f"workbench.page_size={w.page_size}: between 1 and 500")
    if int(w.flow_hops) not in (1, 2):
        raise ConfigError(f"workbench.flow_hops={w.flow_hops}: 1 or 2")
    return Settings(secret=secret, secure_cookies=bool(w.secure_cookies),
                    session_max_age=int(_duration(w.session_max_age, "workbench.session_max_age").total_seconds()),
                    page_size=int(w.page_size), window=_duration(w.window, "workbench.window"),
                    flow_hops=int(w.flow_hops), flow_max_edges=int(w.flow_max_edges))


def build(cfg: DictConfig):
    """(app, db, description): everything but the HTTP server. Raises UserError."""
    w = cfg.workbench
    settings_of(cfg, "x" * 32)  # durations and sizes, before anything is opened
    db = open_db(w.db_url)
    refresh_statistics(db)
    settings = settings_of(cfg, session_secret(secret_path(cfg, db)))
    transactions = None
    if w.transactions and Path(w.transactions).is_file():
        transactions = Transactions.load(w.transactions)
        evidence = f"transactions {w.transactions} ({transactions.height:,} rows)"
    else:
        evidence = "no transactions file: case pages show the alerted transfers only"
    users = list_users(db)
    about = f"database {db.url}, {len(users)} user(s), {evidence}"
    if not users:
        about += "; no user can log in yet: create one with task=users (docs/workbench.md)"
    return create_app(db, settings, transactions), db, about


def serve(cfg: DictConfig) -> dict:
    w = cfg.workbench
    check_port(w.host, int(w.port))
    app, db, about = build(cfg)
    config = uvicorn.Config(app, host=w.host, port=int(w.port), log_level=str(w.log_level).lower(), access_log=False,
                            http="httptools" if has_module("httptools") else "h11", lifespan="off",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    print(f"workbench on http://{w.host}:{w.port} [{about}]", file=sys.stderr, flush=True)
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    try:
        server.run()
    finally:
        db.close()
    if stopped:
        print(f"stopped ({signal.Signals(stopped[-1]).name})", file=sys.stderr, flush=True)
    return {"served": True}
