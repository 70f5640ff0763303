"""Alembic's environment for the case database.

:func:`aml_pipeline.cases.db.open_db` runs the migrations programmatically and hands its
connection over in ``config.attributes["connection"]``; the ``alembic`` command works too
(``alembic -x url=sqlite:///cases.db -c <this folder>/alembic.ini upgrade head`` is not
needed: ``open_db`` migrates on open).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from aml_pipeline.cases.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
