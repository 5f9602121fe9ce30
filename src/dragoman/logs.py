"""Logging setup: every line passes through the same redaction as audit records.

Two formats: ``text`` (one human-readable line) and ``json`` (one JSON object per line, for
log pipelines that index fields: Loki, CloudWatch, Elasticsearch). Both are redacted after
the message is formatted with its arguments and after a traceback is rendered, so neither a
value passed to a log call nor an exception's text can carry a token or a card number out.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp.http_exceptions import HttpProcessingError

from dragoman.audit.redact import redact_text

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, RFC 3339 with milliseconds), ``level``,
    ``pid``, ``logger``, ``message``, and ``exception`` when a traceback is attached."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        if record.exc_info:
            line["exception"] = redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact_text(record.exc_text)
        if record.stack_info:
            line["stack"] = redact_text(self.formatStack(record.stack_info))
        # ASCII only: a line separator (U+2028, U+0085) left raw would split the line for
        # some readers, and an ASCII-only stderr would write non-JSON escapes.
        return json.dumps(line)


class ParserRefusalFilter(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (a malformed request line or header:
    a scanner, a byte that is not ASCII in the target) as an ERROR with the parser's
    traceback, so anyone could fill the log with them. The client has had its 400 already;
    such a refusal becomes one WARNING line naming the peer and the kind of error. Its text
    is left out: it quotes the refused bytes, which are the client's."""

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if isinstance(refused, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            # Never louder than aiohttp chose: it logs a first request that is not HTTP at
            # all (TLS to a plain port, a scanner) at DEBUG.
            record.levelno = min(record.levelno, logging.WARNING)
            record.levelname = logging.getLevelName(record.levelno)
            record.msg = "refused a malformed request from %s (%s, %s)"
            record.args = (peer, type(refused).__name__, refused.code)
            record.exc_info, record.exc_text = None, None
        return True


_PARSER_REFUSALS = ParserRefusalFilter()


def quiet_parser_refusals() -> None:
    """Put :class:`ParserRefusalFilter` on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if _PARSER_REFUSALS not in logger.filters:
        logger.addFilter(_PARSER_REFUSALS)


def configure(level: str = "INFO", log_format: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else RedactingFormatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would repeat each request line, query strings included;
    # the audit trail is the (redacted) record of requests.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_parser_refusals()
    _log_uncaught()


def _log_uncaught() -> None:
    """Exceptions nothing caught (in the main thread, another thread, or where Python can
    only report them: an SSL callback, a finaliser) go through logging too, so they are
    redacted and in the log's format like every other line."""
    uncaught = logging.getLogger("dragoman.uncaught")

    def excepthook(kind: type[BaseException], value: BaseException, trace: Any) -> None:
        uncaught.error("uncaught exception", exc_info=(kind, value, trace))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            uncaught.error(
                "uncaught exception in thread %s",
                args.thread.name if args.thread else "?",
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            )

    def unraisable_hook(unraisable: Any) -> None:
        uncaught.error(
            "%s: %r",
            unraisable.err_msg or "exception ignored",
            unraisable.object,
            exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
    # At DEBUG, botocore logs request headers (X-Amz-Security-Token among them).
    for chatty in ("botocore", "boto3", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
