"""The PCI DSS 10.2.2 fields every audit record carries, whoever built it.

10.2.2 asks each record for: user identification (``user``), type of event (``event``),
date and time (``time``), success or failure (``outcome``: ``ok`` is success, ``refused``
and ``failed`` are failures), origination (``source``: the client address of a request,
the host and process of anything else) and the affected resource (``resource``).

Request records set them when they are built (:func:`dragoman.audit.record.request_record`);
records made elsewhere (the mapping trail, the CLI) get whatever they lack from their own
fields here, in the sink, so no writer can forget them.
"""

from __future__ import annotations

import os
import socket
from typing import Any

PCI_FIELDS = ("user", "event", "time", "outcome", "source", "resource")


def process_source() -> str:
    """Where a record made by this process (not on behalf of a client) comes from."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _resource(record: dict[str, Any]) -> str | None:
    if record.get("mapping_id"):
        return f"mapping/{record['mapping_id']}"
    if record.get("event") == "mapping":
        return "mapping"
    return record.get("path") if isinstance(record.get("path"), str) else None


def _outcome(record: dict[str, Any]) -> str | None:
    decision = record.get("decision")
    if decision == "allow":
        return "ok"
    if decision == "deny":
        return "refused"
    return None


def complete(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every 10.2.2 field present (a copy; the caller's dict is kept)."""
    done = dict(record)
    if "user" not in done:
        done["user"] = record.get("principal") or record.get("actor")
    if "source" not in done:
        done["source"] = record.get("client_ip") or process_source()
    if "resource" not in done:
        done["resource"] = _resource(record)
    if "outcome" not in done:
        done["outcome"] = _outcome(record)
    return done
