"""Strict verification of untrusted JWS tokens, shared by the inbound authenticator and the
upstream verifier library.

Parsing and signature checks are PyJWT's; this module adds the policy around them, in the
order an attacker would probe it:

1. size cap, compact JWS shape (three segments: a JWE or a JSON serialisation is refused);
2. header policy: an algorithm allow-list (never ``none``, never HMAC), no key-carrying or
   key-locating headers (``jku``, ``x5u``, ``jwk``, ``x5c``, ``x5t``...), no ``crit``
   extensions, an accepted ``typ``, a ``kid``;
3. the key: found by ``kid`` in a trusted key set, and of the family and curve the algorithm
   needs (an RSA key cannot verify ES256; a P-384 key cannot verify ES256);
4. the signature;
5. the claims, as a second step with an injectable clock (:func:`check_time_claims`).

Failures raise :class:`JoseError` with a stable ``reason``; messages never quote the token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Headers that point at, or carry, the verification key: trusting any of them lets the
# token choose its own key. We never look keys up anywhere but our configured key set.
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256"})
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class JoseError(Exception):
    """A token was refused. ``reason`` is a stable code, safe to log and to show."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    algorithms: frozenset[str]
    accepted_types: frozenset[str]
    allow_missing_type: bool = False
    max_token_bytes: int = 16_384

    def __post_init__(self) -> None:
        unsafe = self.algorithms - ASYMMETRIC_ALGORITHMS
        if unsafe:
            raise ValueError(f"algorithms not allowed for verification: {sorted(unsafe)}")


@dataclass(frozen=True, slots=True)
class CheckedHeader:
    alg: str
    kid: str
    typ: str | None


def normalise_typ(value: str) -> str:
    """RFC 7515 §4.1.9: compare `typ` case-insensitively, without `application/`."""
    return value.strip().lower().removeprefix("application/")


def check_header(token: str, policy: HeaderPolicy) -> CheckedHeader:
    """Steps 1 and 2: shape, size and header policy. Nothing is trusted yet."""
    if len(token) > policy.max_token_bytes:
        raise JoseError("token_too_large", "token longer than allowed")
    if token.count(".") != 2:
        raise JoseError("token_malformed", "not a compact JWS")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise JoseError("token_malformed", "unreadable token header") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        raise JoseError("alg_not_allowed", "signature algorithm not allowed")
    forbidden = FORBIDDEN_HEADERS.intersection(header)
    if forbidden:
        raise JoseError("header_forbidden", f"header parameter not allowed: {sorted(forbidden)}")
    if "crit" in header or header.get("b64", True) is not True:
        raise JoseError("header_forbidden", "critical header extensions are not supported")
    typ = header.get("typ")
    if typ is None:
        if not policy.allow_missing_type:
            raise JoseError("typ_not_allowed", "token type missing")
    elif not isinstance(typ, str) or normalise_typ(typ) not in policy.accepted_types:
        raise JoseError("typ_not_allowed", "token type not accepted here")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JoseError("kid_missing", "token names no key")
    return CheckedHeader(alg=alg, kid=kid, typ=typ if isinstance(typ, str) else None)


def key_fits(alg: str, key: TrustedKey) -> bool:
    """Whether ``key`` is of the family (and curve) that ``alg`` needs."""
    material = key.public_key
    if alg.startswith(("RS", "PS")):
        return isinstance(material, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return (
            isinstance(material, ec.EllipticCurvePublicKey)
            and material.curve.name == _EC_CURVES[alg]
        )
    if alg == "EdDSA":
        return isinstance(material, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


_NO_CLAIM_CHECKS = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key from a trusted key set, with the JWK members that restrict its use."""

    kid: str
    public_key: PublicKey
    alg: str | None
    use: str | None
    active_from: float | None = None
    """dragoman's timeline members (docs/keys.md): when the key starts to sign,"""
    active_until: float | None = None
    """when it stops signing,"""
    verify_until: float | None = None
    """and when it stops verifying (retired). Absent from other issuers' keys."""

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> TrustedKey:
        """Raise ValueError when the JWK is not a usable public verification key."""
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError("JWK without kid")
        if any(member in jwk for member in ("d", "p", "q", "k")):
            raise ValueError("JWK carries private or symmetric key material")
        try:
            material = jwt.PyJWK(dict(jwk)).key
        except Exception as exc:
            # Not only PyJWTError: PyJWK raises NotImplementedError for "alg": "none" and
            # KeyError for an "oct" key without "k". One odd entry must not fail the key set.
            raise ValueError(f"unusable JWK: {type(exc).__name__}: {exc}") from None
        if not isinstance(material, PublicKey):
            raise ValueError("JWK is not an asymmetric public key")
        alg, use = jwk.get("alg"), jwk.get("use")
        return cls(
            kid=kid,
            public_key=material,
            alg=alg if isinstance(alg, str) else None,
            use=use if isinstance(use, str) else None,
            active_from=_moment(jwk, "active_from"),
            active_until=_moment(jwk, "active_until"),
            verify_until=_moment(jwk, "verify_until"),
        )


def _moment(jwk: Mapping[str, Any], name: str) -> float | None:
    value = jwk.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"JWK member {name} is not a number of seconds")
    return float(value)


def check_key_timeline(
    key: TrustedKey, claims: Mapping[str, Any], *, now: float, leeway: float
) -> None:
    """SEMANTICS §3, on the verifying side: a pending key verifies nothing, a retired key
    verifies nothing (even tokens whose exp has not passed), and a token must have been
    signed while its key was the current one."""
    if key.active_from is not None and now + leeway < key.active_from:
        raise JoseError("key_pending", "the token's key does not sign yet")
    if key.verify_until is not None and now >= key.verify_until:
        raise JoseError("key_retired", "the token's key is retired")
    issued = _numeric(claims, "iat", required=True)
    assert issued is not None  # required above
    # iat is a whole second: the signing instant lies in [iat, iat + 1). Refuse only what no
    # instant of that second (widened by the leeway) can explain.
    if key.active_from is not None and issued + 1 + leeway <= key.active_from:
        raise JoseError("key_not_current", "the token was signed before its key was current")
    if key.active_until is not None and issued >= key.active_until + leeway:
        raise JoseError("key_not_current", "the token was signed after its key was current")


def verify_signature(token: str, header: CheckedHeader, key: TrustedKey) -> dict[str, Any]:
    """Steps 3 and 4: the key must fit the algorithm, then the signature must verify.

    Returns the payload; its claims are not checked yet.
    """
    if (key.alg is not None and key.alg != header.alg) or not key_fits(header.alg, key):
        raise JoseError("key_mismatch", "the key named by kid does not fit the algorithm")
    if key.use is not None and key.use != "sig":
        raise JoseError("key_mismatch", "the key named by kid is not a signing key")
    try:
        decoded = jwt.decode_complete(
            token,
            key=key.public_key,
            algorithms=[header.alg],
            options=_NO_CLAIM_CHECKS,  # type: ignore[arg-type]
        )
    except jwt.InvalidSignatureError:
        raise JoseError("signature_invalid", "signature does not verify") from None
    except jwt.PyJWTError:
        raise JoseError("token_malformed", "token cannot be decoded") from None
    payload = decoded["payload"]
    if not isinstance(payload, dict):
        raise JoseError("token_malformed", "claims are not a JSON object")
    return payload


def _numeric(payload: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise JoseError("claim_missing", f"required claim missing: {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JoseError("claim_invalid", f"claim {name} is not a NumericDate")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        # Python's JSON reads NaN and Infinity: an exp of either would never expire.
        raise JoseError("claim_invalid", f"claim {name} is not a NumericDate")
    return number


def check_time_claims(
    payload: Mapping[str, Any],
    *,
    now: float,
    leeway: float,
    require_iat: bool = True,
    max_lifetime: float | None = None,
) -> None:
    """Step 5a: ``exp`` (required), ``nbf``, ``iat`` against ``now``, with ``leeway``."""
    exp = _numeric(payload, "exp", required=True)
    iat = _numeric(payload, "iat", required=require_iat)
    nbf = _numeric(payload, "nbf", required=False)
    assert exp is not None  # required above
    if now >= exp + leeway:
        raise JoseError("token_expired", "token has expired")
    if nbf is not None and now + leeway < nbf:
        raise JoseError("token_not_yet_valid", "token is not valid yet")
    if iat is not None and now + leeway < iat:
        raise JoseError("token_not_yet_valid", "token was issued in the future")
    if max_lifetime is not None and iat is not None and exp - iat > max_lifetime:
        raise JoseError("token_lifetime_too_long", "token lives longer than allowed")


def check_issuer(payload: Mapping[str, Any], issuer: str) -> None:
    """Step 5b: exact string comparison (no normalisation, no trailing-slash leniency)."""
    if payload.get("iss") != issuer:
        raise JoseError("issuer_mismatch", "token from another issuer")


def check_audience(payload: Mapping[str, Any], audiences: Collection[str]) -> None:
    """Step 5c: ``aud`` (a string or a list of strings) must name one of ``audiences``."""
    aud = payload.get("aud")
    if isinstance(aud, str):
        named = {aud}
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        named = set(aud)
    else:
        raise JoseError("audience_mismatch", "token has no valid audience")
    if named.isdisjoint(audiences):
        raise JoseError("audience_mismatch", "token is for another audience")


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` of a token whose signature is not checked yet.

    Used only to pick which configured issuer should verify it; never logged, never trusted.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


class KeyLookup(Protocol):
    async def key(self, kid: str) -> TrustedKey: ...


@dataclass(frozen=True, slots=True)
class VerifiedJws:
    header: CheckedHeader
    claims: dict[str, Any]
    key: TrustedKey


async def verify_jws(
    token: str,
    *,
    policy: HeaderPolicy,
    keys: KeyLookup,
    issuer: str,
    audiences: Collection[str],
    now: float,
    leeway: float,
    max_lifetime: float | None = None,
) -> VerifiedJws:
    """Steps 1 to 5 in order: header policy, key, signature, iss, aud, time claims.

    Raises JoseError (or whatever ``keys`` raises when it has no usable key set).
    """
    header = check_header(token, policy)
    key = await keys.key(header.kid)
    claims = verify_signature(token, header, key)
    check_issuer(claims, issuer)
    check_audience(claims, audiences)
    check_time_claims(claims, now=now, leeway=leeway, max_lifetime=max_lifetime)
    return VerifiedJws(header, claims, key)
