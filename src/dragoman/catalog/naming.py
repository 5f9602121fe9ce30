"""Names for imported operations: ids, `resource:action` scopes and risk tiers.

Everything here is a pure function of the OpenAPI document, so importing the same document
twice gives the same names; clashes are settled in a fixed order (path, then method).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from dragoman.settings import RiskTier, default_tier

_RUN = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_VERSION = re.compile(r"^v\d+([._-]\d+)*$|^\d+(\.\d+)*$")

_ACTION_SYNONYMS = {
    "get": "read",
    "retrieve": "read",
    "fetch": "read",
    "show": "read",
    "read": "read",
    "remove": "delete",
    "destroy": "delete",
    "modify": "update",
    "edit": "update",
}
_VERBS = frozenset(
    {*_ACTION_SYNONYMS, "list", "create", "update", "delete", "search", "replace", "patch"}
)
_MONEY_WORDS = frozenset(
    {
        "charge", "charges", "capture", "captures", "refund", "refunds", "payout", "payouts",
        "transfer", "transfers", "disburse", "disbursement", "disbursements", "withdraw",
        "withdrawal", "withdrawals",
    }
)  # fmt: skip
# Words that move money only as the thing written: `payments` (a payment made), not the
# `payment` of `payment_methods` or `payment_intents` (which only set one up).
_MONEY_NOUNS = frozenset({"payment", "payments"})
_MONEY_VERBS = frozenset({"pay", "pays", "purchase", "purchases", "debit", "debits"})
_MAX_ID = 128


def snake(text: str) -> str:
    """``createPaymentToken`` and ``payment-tokens`` -> ``create_payment_token``,
    ``payment_tokens``: camelCase split, lower case, every other run of characters -> ``_``."""
    return _RUN.sub("_", _CAMEL.sub("_", text).lower()).strip("_")


def operation_id(operation_id: str | None, method: str, path: str) -> str:
    """The catalog id: the operationId normalised part by part (dots kept), or
    ``method_path`` when the document names none."""
    if operation_id:
        parts = [snake(part) for part in operation_id.split(".")]
        joined = ".".join(part for part in parts if part)
        if joined:
            return joined[:_MAX_ID]
    return snake(f"{method} {path}")[:_MAX_ID] or method.lower()


def is_version(segment: str) -> bool:
    return _VERSION.match(segment.lower()) is not None


def resource(tags: Sequence[str], literals: Sequence[str]) -> str:
    """The first tag, else the first literal path segment after a version segment."""
    for tag in tags:
        if snake(tag):
            return snake(tag)
    rest = list(literals)
    while rest and is_version(rest[0]):
        rest.pop(0)
    for segment in rest:
        if snake(segment):
            return snake(segment)
    return "root"


def method_action(method: str, is_item: bool) -> str:
    """GET on a collection -> list, GET on an item -> read, POST -> create, PUT/PATCH ->
    update, DELETE -> delete."""
    if method in ("GET", "HEAD"):
        return "read" if is_item else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}[method]


def id_action(operation_id: str | None) -> str | None:
    """The action an operationId names: the part after the last dot (``payment_methods.
    set_default`` -> ``set_default``), or a leading verb (``createPaymentToken`` -> ``create``);
    ``get``, ``retrieve``... read as ``read``."""
    if not operation_id:
        return None
    if "." in operation_id:
        last = snake(operation_id.rsplit(".", 1)[1])
        return _ACTION_SYNONYMS.get(last, last) or None
    first = snake(operation_id).split("_", 1)[0]
    return _ACTION_SYNONYMS.get(first, first) if first in _VERBS else None


def tier(method: str, words: Sequence[str]) -> RiskTier:
    """``default_tier(method)``, or ``money`` for a write whose name moves money (charge,
    capture, refund, payout, transfer, pay, purchase, debit; a payment, but not a payment
    method or intent; confirming a payment intent)."""
    split = [snake(word).split("_") for word in words]
    found = {w for tokens in split for w in tokens}
    if method not in ("GET", "HEAD"):
        if found & (_MONEY_WORDS | _MONEY_VERBS):
            return "money"
        for tokens in split:
            for index, token in enumerate(tokens):
                following = tokens[index + 1] if index + 1 < len(tokens) else None
                if token in _MONEY_NOUNS and (following is None or following in _VERBS):
                    return "money"
        if "confirm" in found and "payment" in found and found & {"intent", "intents"}:
            return "money"
    return default_tier(method)


def unique(names: Sequence[str], separator: str = "_") -> list[str]:
    """Names made unique in order: the first keeps its name, the next ones get ``_2``,
    ``_3``... (skipping any name already taken)."""
    taken = Counter(names)
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen or (candidate != name and candidate in taken):
            n += 1
            candidate = f"{name}{separator}{n}"
        seen.add(candidate)
        result.append(candidate)
    return result


def scopes(resources: Sequence[str], actions: Sequence[str], fallbacks: Sequence[str]) -> list[str]:
    """``resource:action`` for each operation, unique: operations that share one scope take
    their method's action (``fallbacks``) when it differs, then a numeric suffix."""
    first = [f"{r}:{a}" for r, a in zip(resources, actions, strict=True)]
    shared = {s for s, n in Counter(first).items() if n > 1}
    second = [
        f"{r}:{f}" if s in shared else s
        for r, f, s in zip(resources, fallbacks, first, strict=True)
    ]
    return unique(second)
