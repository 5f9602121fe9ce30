"""The decision API: a gateway (nginx ``auth_request``, Envoy ``ext_authz``) asks, dragoman
runs the pipeline except forwarding, and answers allow with the minted token or deny with
the problem the caller should see (docs/decision.md)."""

from dragoman.decision.endpoint import (
    DecisionEndpoint,
    DecisionListener,
    decision_app,
    decision_runner,
)

__all__ = ["DecisionEndpoint", "DecisionListener", "decision_app", "decision_runner"]
