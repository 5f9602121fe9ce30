"""Signing keys: the local encrypted key file and the published key set."""
