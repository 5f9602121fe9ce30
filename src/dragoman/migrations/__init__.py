"""Alembic migrations of the mapping store; applied by dragoman.state.migrate."""
