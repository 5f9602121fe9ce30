"""Strict verification of untrusted JWS tokens, shared by the inbound authenticator and the
upstream verifier library.

Parsing and signature checks are PyJWT's; this module adds the policy around them, in the
order an attacker would probe it. A token is read once (:func:`read_jws`: PyJWT reads and
checks all three segments, ~90 µs for a 1 KB token since PyJWT 2.14 checks every character
in Python), and every step below works on that one reading:

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
# NIST SP 800-131A; PyJWT only warns below it, on every verification.
MIN_RSA_BITS = 2048
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


# PyJWT's JWS reader with signature checks off: it decodes and checks the three segments and
# the header's JSON; the signature is checked by verify_signature, with the key policy first.
_READER = jwt.PyJWS()
_READ_ONLY: Any = {"verify_signature": False}


@dataclass(frozen=True, slots=True)
class UnverifiedJws:
    """A compact JWS as PyJWT read it. Nothing in it is trusted yet."""

    token: str
    header: Mapping[str, Any]
    payload: bytes
    signature: bytes
    claims: dict[str, Any] | None
    """The payload as a JSON object; None when it is not one."""

    @property
    def signing_input(self) -> bytes:
        """RFC 7515 §5.2: the signature covers the header and payload segments as sent."""
        return self.token[: self.token.rindex(".")].encode("ascii")


def read_jws(token: str, max_token_bytes: int) -> UnverifiedJws:
    """Step 1: size, compact shape, and one reading of all three segments by PyJWT."""
    if len(token) > max_token_bytes:
        raise JoseError("token_too_large", "token longer than allowed")
    if not token.isascii():
        # A compact JWS is base64url and dots. A header byte that is not UTF-8 reaches here
        # as a lone surrogate, which PyJWT's own encoding step would raise on (a 500); and
        # only for ASCII is the length above a count of bytes.
        raise JoseError("token_malformed", "not a compact JWS")
    if token.count(".") != 2:
        raise JoseError("token_malformed", "not a compact JWS")
    try:
        read = _READER.decode_complete(token, options=_READ_ONLY)
    except jwt.PyJWTError:
        raise JoseError("token_malformed", "unreadable token") from None
    try:
        claims = json.loads(read["payload"])
    except (ValueError, RecursionError):
        claims = None
    return UnverifiedJws(
        token=token,
        header=read["header"],
        payload=read["payload"],
        signature=read["signature"],
        claims=claims if isinstance(claims, dict) else None,
    )


def _read_checked(token: str, policy: HeaderPolicy) -> UnverifiedJws:
    """:func:`read_jws`, except that a token unreadable whole whose header alone breaks the
    policy is refused for its header (an RFC 7797 ``b64: false`` token, say): the more
    precise answer, and the one a reader of the header alone gives."""
    try:
        return read_jws(token, policy.max_token_bytes)
    except JoseError as refused:
        if refused.reason == "token_malformed" and token.isascii() and token.count(".") == 2:
            try:
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError:
                raise refused from None
            _check_header_policy(header, policy)
        raise


@dataclass(frozen=True, slots=True)
class CheckedHeader:
    alg: str
    kid: str
    typ: str | None


def normalise_typ(value: str) -> str:
    """RFC 7515 §4.1.9: compare `typ` case-insensitively, without `application/`."""
    return value.strip().lower().removeprefix("application/")


def check_header(token: str | UnverifiedJws, policy: HeaderPolicy) -> CheckedHeader:
    """Steps 1 and 2: shape, size and header policy. Nothing is trusted yet."""
    jws = token if isinstance(token, UnverifiedJws) else _read_checked(token, policy)
    return _check_header_policy(jws.header, policy)


def _check_header_policy(header: Mapping[str, Any], policy: HeaderPolicy) -> CheckedHeader:
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
        if isinstance(material, rsa.RSAPublicKey) and material.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {material.key_size} bits (at least {MIN_RSA_BITS})")
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


def verify_signature(
    token: str | UnverifiedJws, header: CheckedHeader, key: TrustedKey
) -> dict[str, Any]:
    """Steps 3 and 4: the key must fit the algorithm, then the signature must verify.

    Returns the payload; its claims are not checked yet.
    """
    if (key.alg is not None and key.alg != header.alg) or not key_fits(header.alg, key):
        raise JoseError("key_mismatch", "the key named by kid does not fit the algorithm")
    if key.use is not None and key.use != "sig":
        raise JoseError("key_mismatch", "the key named by kid is not a signing key")
    jws = token if isinstance(token, UnverifiedJws) else read_jws(token, len(token))
    if jws.header.get("alg") != header.alg:
        raise JoseError("key_mismatch", "the header checked is not this token's")
    try:
        algorithm = _READER.get_algorithm_by_name(header.alg)
        verified = algorithm.verify(
            jws.signing_input, algorithm.prepare_key(key.public_key), jws.signature
        )
    except (jwt.PyJWTError, NotImplementedError, ValueError, TypeError):
        raise JoseError("key_mismatch", "the key named by kid does not fit the algorithm") from None
    if not verified:
        raise JoseError("signature_invalid", "signature does not verify")
    if jws.claims is None:
        raise JoseError("token_malformed", "claims are not a JSON object")
    return jws.claims


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
    """Step 5a: ``exp`` (required), ``nbf``, ``iat`` against ``now``. The ``leeway`` is for
    a ``nbf`` or ``iat`` in the future (a clock a little ahead of ours); an ``exp`` that has
    passed is passed (SEMANTICS §2): no leeway lengthens a token's life."""
    exp = _numeric(payload, "exp", required=True)
    iat = _numeric(payload, "iat", required=require_iat)
    nbf = _numeric(payload, "nbf", required=False)
    assert exp is not None  # required above
    if now >= exp:
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


def unverified_issuer(token: str | UnverifiedJws) -> str | None:
    """The ``iss`` of a token whose signature is not checked yet.

    Used only to pick which configured issuer should verify it; never logged, never trusted.
    """
    if not isinstance(token, UnverifiedJws):
        try:
            token = read_jws(token, len(token))
        except JoseError:
            return None
    issuer = None if token.claims is None else token.claims.get("iss")
    return issuer if isinstance(issuer, str) else None


class KeyLookup(Protocol):
    async def key(self, kid: str) -> TrustedKey: ...


@dataclass(frozen=True, slots=True)
class VerifiedJws:
    header: CheckedHeader
    claims: dict[str, Any]
    key: TrustedKey


async def verify_jws(
    token: str | UnverifiedJws,
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
    jws = token if isinstance(token, UnverifiedJws) else _read_checked(token, policy)
    header = check_header(jws, policy)
    key = await keys.key(header.kid)
    claims = verify_signature(jws, header, key)
    check_issuer(claims, issuer)
    check_audience(claims, audiences)
    check_time_claims(claims, now=now, leeway=leeway, max_lifetime=max_lifetime)
    return VerifiedJws(header, claims, key)
