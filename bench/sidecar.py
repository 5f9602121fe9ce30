"""The auth sidecar behind nginx ``auth_request``: what a team would otherwise assemble.

nginx sends it a subrequest per call (headers only, with ``X-Original-Method`` and
``X-Original-URI``); it answers 200 with a minted token in ``X-Token`` (nginx then
forwards the call upstream with ``Authorization: Bearer <that token>``), or 401/403.
Per request it does the checks dragoman does, small and honest, on the same stack
(aiohttp on uvloop, ``reuse_port`` workers):

1. the caller's bearer JWT (RS256 or ES256) verified with PyJWT against the issuer's JWKS,
   fetched once at start (``iss``, ``aud``, ``exp``/``nbf`` with 30 s leeway, ``typ``
   at+jwt); a verified token is remembered, keyed on the whole token, for at most 60 s and
   never past its ``exp`` (dragoman's default ``identity.verify_cache_ttl``; ``--verify-
   cache-ttl 0`` turns it off);
2. the operation from method and path (the demo catalog's routes as regular expressions);
3. the mapping of the token's ``cloud_account`` (an in-memory dict loaded at start): it
   must exist, name the customer in the path, and grant one of the caller's roles;
4. the scope: the role's allowed tiers (billing_admin: read, change, destroy; viewer: read);
5. no CSRF check (an API call without cookies, as dragoman with ``csrf`` on ``browser``);
6. an ES256 token minted with PyJWT (fresh ``jti``, 5 min) in ``X-Token``;
7. one JSON audit line per decision, appended to a file (line-buffered).

Not done (dragoman does them): rate limits, anomaly counts, key rotation, a database.

    python bench/sidecar.py --port 9005 --issuer http://127.0.0.1:9003 \\
        --mappings mappings.json --audit sidecar-audit.jsonl --workers 1
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from dragoman.demo.platform import OPERATIONS
from serving import run_workers, serve_forever

AUDIENCE = "dragoman"
UPSTREAM_AUDIENCE = "payments"
ROLE_TIERS = {"billing_admin": {"read", "change", "destroy"}, "viewer": {"read"}}
TIER_OF_METHOD = {"GET": "read", "HEAD": "read", "DELETE": "destroy"}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    scope: str
    tier: str


def routes() -> list[Route]:
    found = []
    for op in OPERATIONS:
        regex = re.sub(r"\{[^/}]+\}", "([^/]+)", op.path)
        tier = TIER_OF_METHOD.get(op.method, "change")
        found.append(Route(op.method, re.compile(f"^{regex}$"), op.scope, tier))
    return found


def fetch_jwks(issuer: str) -> dict[str, Any]:
    """kid -> public key, from the issuer's discovery document and JWKS."""
    with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=5) as r:  # noqa: S310
        jwks_uri = json.load(r)["jwks_uri"]
    with urllib.request.urlopen(jwks_uri, timeout=5) as r:  # noqa: S310 (loopback)
        keys = jwt.PyJWKSet.from_dict(json.load(r))
    return {key.key_id: key for key in keys.keys}


class Sidecar:
    def __init__(self, issuer: str, mappings: Path, audit: Path, cache_ttl: float) -> None:
        self.issuer = issuer
        self.keys = fetch_jwks(issuer)
        self.mappings: dict[str, dict[str, Any]] = json.loads(mappings.read_text("utf-8"))
        self.routes = routes()
        self.cache_ttl = cache_ttl
        self.verified: dict[str, tuple[float, dict[str, Any]]] = {}
        self.signing_key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "sidecar-" + secrets.token_hex(4)
        self.audit = audit.open("a", buffering=1, encoding="utf-8")

    def verify(self, token: str) -> dict[str, Any]:
        now = time.time()
        cached = self.verified.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        header = jwt.get_unverified_header(token)
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise jwt.InvalidTokenError("typ")
        key = self.keys.get(header.get("kid", ""))
        if key is None:
            raise jwt.InvalidTokenError("unknown kid")
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=["RS256", "ES256"],
            audience=AUDIENCE,
            issuer=self.issuer,
            leeway=30,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        if self.cache_ttl > 0:
            if len(self.verified) > 100_000:
                self.verified.clear()
            self.verified[token] = (min(now + self.cache_ttl, claims["exp"]), claims)
        return claims

    def decide(self, request: web.Request) -> tuple[int, str, dict[str, Any]]:
        """(status, reason, fields for the audit line and the minted token)."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return 401, "no_token", {}
        try:
            claims = self.verify(auth[7:])
        except jwt.PyJWTError as exc:
            return 401, f"invalid_token: {type(exc).__name__}", {}
        method = request.headers.get("X-Original-Method", "GET")
        path = request.headers.get("X-Original-URI", "/").split("?", 1)[0]
        fields: dict[str, Any] = {"sub": claims["sub"], "method": method, "path": path}
        route = next((r for r in self.routes if r.method == method and r.pattern.match(path)), None)
        if route is None:
            return 403, "unknown_operation", fields
        match = route.pattern.match(path)
        assert match is not None
        mapping = self.mappings.get(str(claims.get("cloud_account")))
        if mapping is None:
            return 403, "no_mapping", fields
        if match.group(1) != mapping["customer"]:
            return 403, "customer_mismatch", fields
        roles = set(claims.get("roles") or ()) & set(mapping["roles"])
        if not any(route.tier in ROLE_TIERS.get(role, ()) for role in roles):
            return 403, "scope_denied", fields
        fields |= {"customer": mapping["customer"], "scope": route.scope}
        return 200, "allow", fields

    def mint(self, fields: dict[str, Any]) -> str:
        now = int(time.time())
        claims = {
            "iss": "bench-sidecar",
            "aud": UPSTREAM_AUDIENCE,
            "sub": fields["sub"],
            "customer": fields["customer"],
            "scope": fields["scope"],
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self.signing_key, algorithm="ES256", headers={"kid": self.kid})

    async def handle(self, request: web.Request) -> web.Response:
        status, reason, fields = self.decide(request)
        headers = {}
        if status == 200:
            headers["X-Token"] = self.mint(fields)
        record = {"ts": time.time(), "decision": reason, "status": status, **fields}
        self.audit.write(json.dumps(record, separators=(",", ":")) + "\n")
        return web.Response(status=status, headers=headers)


async def livez(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def worker(host: str, port: int, issuer: str, mappings: Path, audit: Path, ttl: float) -> None:
    sidecar = Sidecar(issuer, mappings, audit, ttl)
    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_route("*", "/{tail:.*}", sidecar.handle)
    serve_forever(app, host, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--issuer", required=True, help="Issuer URL (discovery is read).")
    parser.add_argument("--mappings", type=Path, required=True, help="JSON: account -> mapping.")
    parser.add_argument("--audit", type=Path, required=True, help="Audit file (JSON lines).")
    parser.add_argument("--verify-cache-ttl", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers < 1:
        sys.exit("--workers must be at least 1")
    run_workers(
        worker,
        (args.host, args.port, args.issuer, args.mappings, args.audit, args.verify_cache_ttl),
        args.workers,
    )


if __name__ == "__main__":
    main()
