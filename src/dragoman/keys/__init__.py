"""Signing keys: providers and the published key set."""
