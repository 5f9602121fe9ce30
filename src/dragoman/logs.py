"""Logging setup: every line passes through the same redaction as audit records."""

from __future__ import annotations

import logging
import sys

from dragoman.audit.redact import redact_text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would repeat each request line, query strings included;
    # the audit trail is the (redacted) record of requests.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # At DEBUG, botocore logs request headers (X-Amz-Security-Token among them).
    for chatty in ("botocore", "boto3", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
