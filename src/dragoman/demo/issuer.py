"""A development OIDC issuer. DEV ONLY: it issues a token to anyone who asks.

It stands in for the console's identity system (cloud IAM, an OIDC provider) in the demo
and in tests: discovery, a JWKS, and a token endpoint that signs whatever claims it is
given. It holds an RSA key (RS256) and an EC key (ES256), generated at start, in memory.
Never expose it beyond loopback.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

DEV_WARNING = "DEV ONLY: this issuer signs a token for anyone who asks"


def _jwk(
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, kid: str, alg: str
) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        text = jwt.algorithms.RSAAlgorithm.to_jwk(public_key)
    else:
        text = jwt.algorithms.ECAlgorithm.to_jwk(public_key)
    jwk: dict[str, Any] = json.loads(text)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@dataclass
class DevIssuer:
    """The issuer's state; ``app()`` serves it, tests call ``token()`` directly."""

    issuer: str = ""
    audience: str = "dragoman"
    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    rsa_kid: str = field(default_factory=lambda: "rsa-" + secrets.token_hex(4))
    ec_kid: str = field(default_factory=lambda: "ec-" + secrets.token_hex(4))
    jwks_fetches: int = 0
    """How often the JWKS was served (tests check the unknown-kid refetch limit)."""
    jwks_available: bool = True
    """Tests set False to make the JWKS endpoint fail."""

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                _jwk(self.rsa_key.public_key(), self.rsa_kid, "RS256"),
                _jwk(self.ec_key.public_key(), self.ec_kid, "ES256"),
            ]
        }

    def claims(
        self,
        subject: str,
        cloud_account: str | None,
        *,
        roles: list[str] | None = None,
        ttl: int = 600,
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(12),
            "auth_time": now,
        }
        if cloud_account is not None:
            claims["cloud_account"] = cloud_account
        if roles is not None:
            claims["roles"] = roles
        claims.update(extra)
        return claims

    def sign(
        self, claims: dict[str, Any], *, alg: str = "RS256", headers: dict[str, Any] | None = None
    ) -> str:
        key: Any = self.rsa_key if alg.startswith("RS") else self.ec_key
        kid = self.rsa_kid if alg.startswith("RS") else self.ec_kid
        all_headers = {"kid": kid, "typ": "at+jwt", **(headers or {})}
        return jwt.encode(claims, key, algorithm=alg, headers=all_headers)

    def token(
        self,
        subject: str,
        cloud_account: str | None,
        *,
        roles: list[str] | None = None,
        ttl: int = 600,
        alg: str = "RS256",
        **extra: Any,
    ) -> str:
        """An access token (typ at+jwt) for ``subject`` in ``cloud_account``."""
        return self.sign(
            self.claims(subject, cloud_account, roles=roles, ttl=ttl, **extra), alg=alg
        )

    # -- HTTP ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_post("/token", self._token)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/jwks.json",
                "token_endpoint": f"{self.issuer}/token",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "x-warning": DEV_WARNING,
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if not self.jwks_available:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response(self.jwks())

    async def _token(self, request: web.Request) -> web.Response:
        """DEV ONLY. Body: {"sub", "cloud_account", "roles", "ttl"} -> {"access_token"}."""
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("sub"), str):
            return web.json_response({"error": "invalid_request"}, status=400)
        ttl = int(body.get("ttl", 600))
        token = self.token(
            body["sub"], body.get("cloud_account"), roles=body.get("roles"), ttl=min(ttl, 3600)
        )
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": ttl},
            headers={"Cache-Control": "no-store", "X-Warning": DEV_WARNING},
        )
