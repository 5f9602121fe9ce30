"""Helpers for the identity tests: forging tokens the attacker's way, talking to the proxy."""

from __future__ import annotations

import base64
import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.runner import DemoStack, demo_settings

PM = "/v1/customers/cus_alice/payment-methods"

Signer = Callable[[bytes], bytes]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def forge(header: dict[str, Any], claims: dict[str, Any], signer: Signer | None) -> str:
    """A compact JWS built by hand; ``signer`` maps the signing input to signature bytes."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    signature = b"" if signer is None else signer(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"


def rs256_signer(key: rsa.RSAPrivateKey) -> Signer:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def es256_signer(key: ec.EllipticCurvePrivateKey) -> Signer:
    """ECDSA with SHA-256 in JWS form (raw r || s), whatever the curve of ``key``."""
    size = (key.curve.key_size + 7) // 8

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    return sign


def alice_claims(issuer: DevIssuer, **extra: Any) -> dict[str, Any]:
    """Claims of a token that the demo stack accepts all the way to the upstream."""
    return issuer.claims("alice", "acct-1001", roles=["billing_admin"], **extra)


def issuer_table(issuer: DevIssuer, **changes: Any) -> dict[str, Any]:
    """The demo's ``[[identity.oidc]]`` table for ``issuer``, with ``changes``."""
    data = demo_settings(
        proxy="http://127.0.0.1:1",
        platform="http://127.0.0.1:2",
        issuer=issuer.issuer,
        console="http://127.0.0.1:3",
        state_dir=Path("unused"),
    )
    table: dict[str, Any] = data["identity"]["oidc"][0]
    return {**table, **changes}


def oidc_overrides(*tables: dict[str, Any]) -> dict[str, Any]:
    return {"identity": {"oidc": list(tables)}}


def request_id() -> str:
    """A fresh X-Request-Id of letters only.

    The audit sink redacts digit runs that pass the Luhn check (card numbers), which can
    mangle UUID-shaped ids; a letters-only id always survives, so records are found by it.
    """
    return "idt-" + "".join(secrets.choice(string.ascii_letters) for _ in range(24))


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    request_id: str


@dataclass(slots=True)
class ProxyClient:
    stack: DemoStack
    http: aiohttp.ClientSession

    async def get(
        self,
        token: str | None = None,
        *,
        path: str = PM,
        headers: list[tuple[str, str]] | None = None,
    ) -> Answer:
        rid = request_id()
        sent = [("X-Request-Id", rid), *(headers or [])]
        if token is not None:
            sent.append(("Authorization", f"Bearer {token}"))
        async with self.http.get(self.stack.urls["proxy"] + path, headers=sent) as response:
            body = await response.json(content_type=None)
            assert response.headers.get("X-Request-Id", rid) == rid
            return Answer(response.status, body, dict(response.headers), rid)

    def audit(self) -> list[dict[str, Any]]:
        path = self.stack.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines()]

    def record_of(self, answer: Answer) -> dict[str, Any]:
        """The one audit record of the request that got ``answer``."""
        (record,) = [r for r in self.audit() if r["request_id"] == answer.request_id]
        return record

    def assert_refused(self, answer: Answer, reason: str) -> None:
        """401 unauthenticated, the audit record says why, and nothing went upstream."""
        assert answer.status == 401, answer.body
        assert answer.body["code"] == "unauthenticated"
        record = self.record_of(answer)
        assert record["decision"] == "deny"
        assert record["code"] == "unauthenticated"
        assert record["reason"] == reason, record["reason"]
        assert self.stack.platform.seen == []

    def assert_unavailable(self, answer: Answer) -> None:
        """503 identity_unavailable, audited, and nothing went upstream."""
        assert answer.status == 503, answer.body
        assert answer.body["code"] == "identity_unavailable"
        record = self.record_of(answer)
        assert record["decision"] == "deny"
        assert record["code"] == "identity_unavailable"
        assert self.stack.platform.seen == []

    def assert_reached_upstream(self, answer: Answer) -> None:
        assert answer.status == 200, answer.body
        assert self.record_of(answer)["decision"] == "allow"
        assert [s.accepted for s in self.stack.platform.seen][-1:] == [True]
