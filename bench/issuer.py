"""The development OIDC issuer(s) as one process, for dragoman's and the sidecar's JWKS.

DEV ONLY (it signs a token for anyone who asks); it listens on loopback.

- ``--issuers 1`` (the default): one issuer at the root, ``dragoman.demo.issuer.DevIssuer``
  as it is (an RSA and an EC key); ``POST /token`` signs one token (RS256).
- ``--issuers N`` and/or ``--keys K``: N issuers at ``/i/0`` ... ``/i/<N-1>`` (issuer URL
  ``<base>/i/<n>``), each publishing K ES256 keys in its JWKS; a token is signed by the key
  the request names. For the scaling curves (issuers 1 -> 50, keys 1 -> 50).

Either way ``POST /bench/tokens`` signs many tokens in one answer, for the caller mix:
``{"ttl": 3600, "callers": [{"sub", "cloud_account", "roles", "issuer": n, "key": k}]}``
-> ``{"tokens": [...]}`` (RS256 in the single-issuer mode, ES256 otherwise).

    python bench/issuer.py --port 9003 [--issuers 10 --keys 10]
"""

from __future__ import annotations

import argparse
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dragoman.demo.issuer import DevIssuer, _jwk
from serving import serve_forever

MAX_TTL = 3600


@dataclass
class ManyKeyIssuer(DevIssuer):
    """A DevIssuer whose JWKS holds ``keys`` ES256 keys (its EC key first)."""

    keys: int = 1
    extra: list[tuple[str, ec.EllipticCurvePrivateKey]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.extra = [
            (f"ec-{secrets.token_hex(4)}", ec.generate_private_key(ec.SECP256R1()))
            for _ in range(self.keys - 1)
        ]

    def signing_keys(self) -> list[tuple[str, ec.EllipticCurvePrivateKey]]:
        return [(self.ec_kid, self.ec_key), *self.extra]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_jwk(key.public_key(), kid, "ES256") for kid, key in self.signing_keys()]}

    def sign_with(self, claims: dict[str, Any], key_index: int) -> str:
        kid, key = self.signing_keys()[key_index % self.keys]
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


def _batch(issuers: list[DevIssuer]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def tokens(request: web.Request) -> web.Response:
        body = await request.json()
        ttl = min(int(body.get("ttl", 600)), MAX_TTL)
        out = []
        for caller in body["callers"]:
            issuer = issuers[int(caller.get("issuer", 0)) % len(issuers)]
            claims = issuer.claims(
                caller["sub"], caller.get("cloud_account"), roles=caller.get("roles"), ttl=ttl
            )
            if isinstance(issuer, ManyKeyIssuer):
                out.append(issuer.sign_with(claims, int(caller.get("key", 0))))
            else:
                out.append(issuer.sign(claims))
        return web.json_response({"tokens": out}, headers={"Cache-Control": "no-store"})

    return tokens


def make_app(base: str, issuers: int, keys: int) -> web.Application:
    if issuers == 1 and keys == 2:
        single = DevIssuer(issuer=base)
        app = single.app()
        app.router.add_post("/bench/tokens", _batch([single]))
        return app
    shared_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # unused
    many: list[DevIssuer] = [
        ManyKeyIssuer(issuer=f"{base}/i/{n}", rsa_key=shared_rsa, keys=keys) for n in range(issuers)
    ]
    app = web.Application()
    for n, issuer in enumerate(many):
        app.add_subapp(f"/i/{n}", issuer.app())
    app.router.add_post("/bench/tokens", _batch(many))
    app.router.add_get(
        "/.well-known/openid-configuration",  # the readiness poll
        lambda _: web.Response(text=json.dumps({"issuers": [i.issuer for i in many]})),
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--issuers", type=int, default=1, help="Issuers (1: the plain one).")
    parser.add_argument("--keys", type=int, default=2, help="Keys per JWKS (2: the plain one).")
    args = parser.parse_args()
    if args.issuers < 1 or args.keys < 1:
        parser.error("--issuers and --keys must be >= 1")
    base = f"http://{args.host}:{args.port}"
    serve_forever(make_app(base, args.issuers, args.keys), args.host, args.port)


if __name__ == "__main__":
    main()
