"""Redaction applied to everything before it is written to an audit record or a log line.

What goes: JWT-shaped strings, dragoman's CSRF tokens (three 43-character base64url parts),
the credential after ``Bearer``/``Basic``, values of secret-named parameters, headers and
JSON members, whatever prefix the name has (``token=``, ``auth_token=``, ``"password": "..."``,
``api_key=``, ``x-csrf-token:``, ``cookie:``...; in a dict, the value of such a key), and
card numbers: 13-19 digits of consecutive groups (spaces, dashes or "+" between groups) that
pass the Luhn check, whatever digit groups stand around them, and are not part of a longer
identifier.

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
# A secret's name may carry any prefix (auth_token, db_password, x-amz-security-token,
# __Host-dragoman-csrf) and, in JSON, quotes around it and its value.
_REDACTED_NAME = (
    r"[\w-]*?(?:token|secret|password|passwd|api[_-]?key|(?:secret|private|signing)[_-]?key"
    r"|credentials?|session|cookie|dragoman-csrf|signature|sig)"
)
# The value: a quoted one whole (JSON's "correct horse battery", a Python repr's 'x'), its
# escaped quotes included and its closing quote optional (a message cut short), else up to
# a separator.
_SECRET_PARAM = re.compile(
    r"(?i)\b(" + _REDACTED_NAME + r")([\"']?\s*[=:]\s*)"
    r"(?:\"(?:[^\"\\]|\\.)*\"?|'(?:[^'\\]|\\.)*'?|[^&\s\"',;]+)"
)
# The password of a URL's userinfo (redis://:pw@host, postgresql://user:pw@host).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
# Four-digit groups joined by dots or underscores, which the digit runs above do not read.
_DOTTED_CARD = re.compile(r"(?<![\w.])\d{4}([._])\d{4}\1\d{4}\1\d{1,7}(?![\w.])")
_SECRET_KEY = re.compile(r"(?i)" + _REDACTED_NAME)
# Digits glued to letters or digits (directly or by a dash) belong to an identifier, not a
# card: a UUID such as 2557cb12-4974-4810-9441-f6aaf7267324 holds a Luhn-valid run.
# Between groups: a space (a tab, a no-break space, a form-encoded "+"), a dash, or two.
_DIGIT_RUN = re.compile(
    r"(?<![0-9A-Za-z])(?<![0-9A-Za-z]-)\d(?:[ \t\u00a0+-]{0,2}\d){12,}"
    r"(?![0-9A-Za-z])(?!-[0-9A-Za-z])"
)
_SEPARATED = re.compile(r"([ \t\u00a0+-]+)")


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
    """The run with every card in it replaced: a card is 13-19 digits of consecutive groups
    (a group: digits between spaces or dashes) that pass the Luhn check. Groups around it
    (a CVV after it, a quantity before it) do not hide it; the longest card from a group
    on is taken."""
    parts = _SEPARATED.split(match.group(0))  # group, separator, group, ...
    groups = parts[::2]
    if all(separator == "-" for separator in parts[1::2]) and sum(map(len, groups)) > 19:
        # Digits joined by dashes past a card's length are one identifier (a UUID of
        # decimal digits, an order number), as digits joined to letters are.
        return match.group(0)
    out: list[str] = []
    start = 0
    while start < len(groups):
        end = _card_end(groups, start)
        if end is None:
            out.append(groups[start])
            if start + 1 < len(groups):
                out.append(parts[2 * start + 1])
            start += 1
            continue
        out.append("[card]")
        if end < len(groups):
            out.append(parts[2 * end - 1])
        start = end
    return "".join(out)


def _card_end(groups: list[str], start: int) -> int | None:
    """The end (exclusive) of the longest card made of ``groups[start:end]``, if any."""
    found = None
    digits = ""
    for end in range(start + 1, len(groups) + 1):
        digits += groups[end - 1]
        if len(digits) > 19:
            break
        if len(digits) >= 13 and luhn_valid(digits):
            found = end
    return found


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
    if "=" in text or ":" in text:  # no separator, no secret-named value (most texts)
        text = _SECRET_PARAM.sub(_secret_value, text)
        if "://" in text:
            text = _USERINFO.sub(r"\1[redacted]@", text)
    text = _DIGIT_RUN.sub(_card, text)
    if "." in text or "_" in text:
        text = _DOTTED_CARD.sub(_dotted_card, text)
    return text


def _secret_value(match: re.Match[str]) -> str:
    value = match.group(0)[match.end(2) - match.start(0) :]
    quote = value[0] if value[0] in "\"'" else ""
    closing = quote if quote and len(value) > 1 and value[-1] == quote else ""
    return f"{match.group(1)}{match.group(2)}{quote}[redacted]{closing}"


def _dotted_card(match: re.Match[str]) -> str:
    digits = match.group(0).replace(match.group(1), "")
    return "[card]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


def redact(value: Any) -> Any:
    """Redact every string inside ``value`` (dicts, lists, tuples), keys included."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            redact(k): "[redacted]"
            if isinstance(k, str) and _SECRET_KEY.fullmatch(k) and v is not None
            else redact(v)
            for k, v in value.items()
        }
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
