"""Alembic environment: migrations run on a connection dragoman hands in.

dragoman.mapping.migrate opens the (async) engine, takes the lock, and passes a sync
connection through ``config.attributes["connection"]``; there is no URL in an alembic.ini.
"""

from __future__ import annotations

from alembic import context

from dragoman.mapping.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `dragoman db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
