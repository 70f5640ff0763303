"""Opening the case database: SQLite by default, PostgreSQL by URL, migrated on open.

``open_db()`` is the one way in. It takes a SQLAlchemy URL (``sqlite:///data/cases.db``,
``postgresql://user:pass@host/db``; a bare file path means SQLite), creates the SQLite
file's folder, brings the schema to the newest Alembic migration (``migrations/``), and
returns a :class:`CaseDB` whose ``session()`` is a unit of work: committed when the block
ends, rolled back when it raises.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from aml_pipeline.errors import ConfigError

#: Where the case database lives when nobody says (relative to where you run).
DEFAULT_URL = "sqlite:///data/cases.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def normalise_url(url: str | Path | None) -> sa.URL:
    """A SQLAlchemy URL from a URL or a file path; ``postgresql://`` uses psycopg 3."""
    if isinstance(url, sa.URL):
        url = url.render_as_string(hide_password=False)
    text = str(url) if url else DEFAULT_URL
    if "://" not in text:
        text = f"sqlite:///{text}"
    try:
        parsed = make_url(text)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"cases.db={text!r} is not a database URL (sqlite:///path/cases.db or "
                          f"postgresql://user:password@host:port/database)") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"cases.db: {parsed.get_backend_name()!r} is not supported; use sqlite:///... or "
                          f"postgresql://...")
    return parsed


class CaseDB:
    """An open case database: ``engine``, ``session()``, ``dialect``, ``url`` (password masked)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits at the end of the block, rolls back if it raises."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def migrate(self) -> str:
        """Upgrade the schema to the newest migration; returns the revision it is at."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        quiet = logging.getLogger("alembic")  # its INFO lines would fill every task's output
        level = quiet.level
        quiet.setLevel(max(level, logging.WARNING))
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        finally:
            quiet.setLevel(level)
        return self.revision()

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "CaseDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CaseDB({self.url})"


def write_lock(session: Session) -> None:
    """SQLite: take the database's write lock as the transaction's first statement (an
    UPDATE matching no row does), so the reads that follow see the latest state and nobody
    else writes until this transaction ends; a second writer waits (busy_timeout) instead
    of failing when it tries to write after reading an older snapshot. PostgreSQL: nothing
    (its callers lock the rows they change with SELECT ... FOR UPDATE)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(sa.text("UPDATE cases SET id = id WHERE 0 = 1"))


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")  # SQLite enforces foreign keys only when asked
    cur.execute("PRAGMA busy_timeout=10000")  # the workbench and task=cases may write at once
    cur.close()


def open_db(url: str | Path | None = None, *, migrate: bool = True, echo: bool = False) -> CaseDB:
    """Open (and by default create or upgrade) the case database at ``url``.

    ``url``: ``None`` for ``sqlite:///data/cases.db``, a SQLAlchemy URL, or a file path
    (SQLite). PostgreSQL URLs use psycopg 3 (``postgresql://`` is read as
    ``postgresql+psycopg://``).
    """
    parsed = normalise_url(url)
    kwargs: dict = {"echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            # one shared in-memory database
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    else:
        kwargs.update(pool_pre_ping=True)
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        with engine.connect() as conn:  # WAL: readers (the workbench) do not block the writer
            if parsed.database and parsed.database != ":memory:":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    db = CaseDB(engine)
    if migrate:
        db.migrate()
    return db
