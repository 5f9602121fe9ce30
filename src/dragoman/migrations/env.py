"""Alembic environment: migrations run on a connection dragoman hands in.

dragoman.state.migrate opens the (async) engine, takes the lock, and passes a sync
connection through ``config.attributes["connection"]``; there is no URL in an alembic.ini.
"""

from __future__ import annotations

from alembic import context

import dragoman.keys.schema
import dragoman.mapping.schema  # noqa: F401 (registers the tables)
from dragoman.state.sql import metadata

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
