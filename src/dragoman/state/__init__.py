"""Shared state: the SQL store (mappings, the signing key set), its engine and migrations."""
