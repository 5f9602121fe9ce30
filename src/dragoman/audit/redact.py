"""Redaction applied to everything before it is written to an audit record or a log line.

What goes: JWT-shaped strings, dragoman's CSRF tokens (three 43-character base64url parts),
the credential after ``Bearer``/``Basic``, values of secret-named parameters and headers
(``token=``, ``password=``, ``api_key=``, ``x-csrf-token:``, ``cookie:``...), and card numbers:
runs of 13-19 digits (spaces or dashes allowed between them) that pass the Luhn check and
are not part of a longer identifier.

A header byte that is not UTF-8 reaches Python as a lone surrogate (aiohttp decodes header
values with ``surrogateescape``), which no UTF-8 encoder writes: one such value in a record
(an ``Origin`` header) failed the audit write, so the request went unrecorded and the trail
refused the next requests as broken. Every lone surrogate is written as an escape instead:
``\\xNN`` for the byte it stands for, ``\\uNNNN`` for one that came from a JSON escape.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote

_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_CSRF = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_SECRET_PARAM = re.compile(
    r"(?i)\b((?:access_|id_|refresh_)?token|secret|client_secret|password|passwd|api[_-]?key"
    r"|x-csrf-token|csrf[_-]?token|session|cookie|set-cookie|__host-dragoman-csrf|signature|sig"
    r"|x-amz-signature|x-amz-security-token)"
    r"(\s*[=:]\s*)([^&\s\"',;]+)"
)
# Digits glued to letters or digits (directly or by a dash) belong to an identifier, not a
# card: a UUID such as 2557cb12-4974-4810-9441-f6aaf7267324 holds a Luhn-valid run.
_DIGIT_RUN = re.compile(
    r"(?<![0-9A-Za-z])(?<![0-9A-Za-z]-)\d(?:[ -]?\d){12,18}(?![0-9A-Za-z])(?!-[0-9A-Za-z])"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[card]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


# Ids dragoman makes (a request id: 32 hex digits; a UUID) hold nothing any pattern above
# replaces: no dot, space, '=' or ':', and no digit run standing alone (a run inside one
# touches a hex letter, or a dash after one). They are checked first because each is new:
# through the cache below every one would miss and push out a value that recurs.
_OWN_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def redact_text(text: str) -> str:
    """``text`` with every secret and card number replaced. Short strings are remembered
    (a caller's principal, its paths, its origin recur on every request; at most 4,096 of
    at most 512 characters each are kept)."""
    if len(text) > 512:
        return _redact(text)
    if _OWN_ID.fullmatch(text):
        return text
    return _redact_short(text)


@functools.lru_cache(maxsize=4096)
def _redact_short(text: str) -> str:
    return _redact(text)


def _escaped(match: re.Match[str]) -> str:
    point = ord(match.group(0))
    if 0xDC80 <= point <= 0xDCFF:  # surrogateescape's stand-in for the byte point - 0xDC00
        return f"\\x{point - 0xDC00:02x}"
    return f"\\u{point:04x}"


_DECODINGS = 3
"""Percent-decodings tried on a text holding ``%`` ("%2520" is an encoded "%20")."""


def _redact(text: str) -> str:
    redacted = _redact_literal(text)
    if "%" not in redacted:
        return redacted
    # A path or query keeps its percent-encoding ("4111%201111%201111%201111", a token's
    # "%2E"s), which no pattern above reads through; an upstream that decodes it reads the
    # secret all the same. Decoded (a few times: "%2520" is an encoded "%20") and redacted
    # again: when that finds something, the decoded text is written, redacted.
    decoded = redacted
    for _ in range(_DECODINGS):
        once = unquote(decoded, errors="surrogateescape")
        if once == decoded:
            break
        decoded = once
    found = _redact_literal(decoded)
    return redacted if found == decoded else found


def _redact_literal(text: str) -> str:
    if not text.isascii():
        text = _LONE_SURROGATE.sub(_escaped, text)
    text = _JWT.sub("[token]", text)
    text = _CSRF.sub("[csrf]", text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} [redacted]", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    return _DIGIT_RUN.sub(_card, text)


def redact(value: Any) -> Any:
    """Redact every string inside ``value`` (dicts, lists, tuples), keys included."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


# Values dragoman generates itself (ids, times, numbers): never free text, and redacting
# them would only corrupt them (a UUID can hold a Luhn-valid digit run).
OWN_FIELDS = frozenset(
    {
        "time",
        "event",
        "audit_id",
        "jti",
        "kid",
        "mapping_id",
        "customer",
        "decision",
        "code",
        "reason",
        "status",
        "operation",
        "scope",
        "authenticator",
        "upstream_status",
        "stream_error",
        "latency_ms",
        "session",
        # mapping records (dragoman.mapping.audit)
        "request",
        "account_index",
        "action",
        "outcome",
        "mapping_status",
        "version",
        # the chain and its checkpoints (dragoman.audit.chain, dragoman.audit.checkpoint)
        "chain",
        "seq",
        "prev",
        "count",
        "last_hash",
        "alg",
        "signature",
    }
)


def redact_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as it may be written: every value redacted but dragoman's own fields."""
    done: dict[str, Any] = {}
    for name, value in record.items():
        # Most values are None or strings: those skip redact()'s dispatch.
        if name in OWN_FIELDS or value is None:
            done[name] = value
        elif type(value) is str:
            done[name] = redact_text(value)
        else:
            done[name] = redact(value)
    return done
