"""JOSE policy shared by the inbound authenticator and the upstream verifier."""
