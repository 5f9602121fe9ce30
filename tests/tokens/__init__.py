"""Scoped tokens: minting, the upstream verifier and its middlewares."""
