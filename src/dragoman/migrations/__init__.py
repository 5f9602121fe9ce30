"""Alembic migrations of the mapping store; applied by dragoman.mapping.migrate."""
