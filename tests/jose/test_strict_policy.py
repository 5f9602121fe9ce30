"""The pure policy functions of dragoman.jose.strict, at their boundaries."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dragoman.demo.issuer import DevIssuer
from dragoman.jose.strict import (
    CheckedHeader,
    HeaderPolicy,
    JoseError,
    TrustedKey,
    check_audience,
    check_header,
    check_issuer,
    check_time_claims,
    normalise_typ,
    read_jws,
    unverified_issuer,
    verify_jws,
    verify_signature,
)

NOW = 1_700_000_000.0
LEEWAY = 30.0
POLICY = HeaderPolicy(
    algorithms=frozenset({"RS256", "ES256"}), accepted_types=frozenset({"at+jwt"})
)


@pytest.fixture(scope="module")
def issuer() -> DevIssuer:
    return DevIssuer(issuer="https://login.example")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned(header: dict[str, Any], claims: dict[str, Any] | None = None) -> str:
    """A token with the given header and a dummy signature (header checks come first)."""
    payload = json.dumps(claims or {"iss": "https://login.example"}).encode()
    return f"{b64url(json.dumps(header).encode())}.{b64url(payload)}.{b64url(b'sig')}"


def refusal(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(JoseError) as refused:
        call(*args, **kwargs)
    return refused.value.reason


def times(**claims: float) -> dict[str, float]:
    return {"iat": NOW, **claims}


def trusted(
    public_key: Any, *, kid: str = "k", alg: str | None = None, use: str | None = None
) -> TrustedKey:
    return TrustedKey(kid=kid, public_key=public_key, alg=alg, use=use)


# -- check_time_claims ------------------------------------------------------------------------


def test_token_is_valid_until_just_before_exp() -> None:
    check_time_claims(times(exp=NOW + 0.001), now=NOW, leeway=LEEWAY)


def test_token_expires_at_exactly_exp_whatever_the_leeway() -> None:
    reason = refusal(check_time_claims, times(exp=NOW), now=NOW, leeway=LEEWAY)
    assert reason == "token_expired"


def test_token_without_leeway_expires_at_exp() -> None:
    assert refusal(check_time_claims, times(exp=NOW), now=NOW, leeway=0) == "token_expired"


def test_nbf_at_exactly_now_plus_leeway_is_valid() -> None:
    check_time_claims(times(exp=NOW + 600, nbf=NOW + LEEWAY), now=NOW, leeway=LEEWAY)


def test_nbf_beyond_now_plus_leeway_is_not_yet_valid() -> None:
    claims = times(exp=NOW + 600, nbf=NOW + LEEWAY + 0.001)
    assert refusal(check_time_claims, claims, now=NOW, leeway=LEEWAY) == "token_not_yet_valid"


def test_iat_at_exactly_now_plus_leeway_is_valid() -> None:
    check_time_claims({"exp": NOW + 600, "iat": NOW + LEEWAY}, now=NOW, leeway=LEEWAY)


def test_iat_beyond_now_plus_leeway_is_not_yet_valid() -> None:
    claims = {"exp": NOW + 600, "iat": NOW + LEEWAY + 1}
    assert refusal(check_time_claims, claims, now=NOW, leeway=LEEWAY) == "token_not_yet_valid"


def test_missing_exp_is_refused() -> None:
    assert refusal(check_time_claims, times(), now=NOW, leeway=LEEWAY) == "claim_missing"


def test_missing_iat_is_refused_by_default() -> None:
    reason = refusal(check_time_claims, {"exp": NOW + 600}, now=NOW, leeway=LEEWAY)
    assert reason == "claim_missing"


def test_missing_iat_is_accepted_when_not_required() -> None:
    check_time_claims({"exp": NOW + 600}, now=NOW, leeway=LEEWAY, require_iat=False)


@pytest.mark.parametrize(
    "exp",
    ["1700000600", True, None, [NOW + 600], float("inf"), float("-inf"), float("nan"), 10**400],
    ids=["string", "bool", "null", "list", "inf", "-inf", "nan", "huge-int"],
)
def test_exp_that_is_not_a_finite_number_is_refused(exp: Any) -> None:
    claims: dict[str, Any] = {"iat": NOW, "exp": exp}
    expected = "claim_missing" if exp is None else "claim_invalid"
    assert refusal(check_time_claims, claims, now=NOW, leeway=LEEWAY) == expected


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_nbf_or_iat_that_is_not_finite_is_refused(name: str) -> None:
    claims: dict[str, Any] = {"iat": NOW, "exp": NOW + 600, name: float("nan")}
    assert refusal(check_time_claims, claims, now=NOW, leeway=LEEWAY) == "claim_invalid"


def test_lifetime_beyond_the_maximum_is_refused() -> None:
    claims = {"iat": NOW, "exp": NOW + 901}
    reason = refusal(check_time_claims, claims, now=NOW, leeway=LEEWAY, max_lifetime=900)
    assert reason == "token_lifetime_too_long"


def test_lifetime_at_the_maximum_is_accepted() -> None:
    check_time_claims({"iat": NOW, "exp": NOW + 900}, now=NOW, leeway=LEEWAY, max_lifetime=900)


# -- check_audience and check_issuer ----------------------------------------------------------


def test_audience_string_naming_an_accepted_audience_is_accepted() -> None:
    check_audience({"aud": "dragoman"}, {"dragoman"})


def test_audience_list_naming_an_accepted_audience_is_accepted() -> None:
    check_audience({"aud": ["https://a.example", "dragoman", "b"]}, {"dragoman"})


def test_audience_list_naming_no_accepted_audience_is_refused() -> None:
    claims = {"aud": ["https://a.example", "b"]}
    assert refusal(check_audience, claims, {"dragoman"}) == "audience_mismatch"


@pytest.mark.parametrize("aud", [None, [], ["dragoman", 5], 5, {"dragoman": True}, ""], ids=repr)
def test_audience_that_is_missing_or_malformed_is_refused(aud: Any) -> None:
    claims = {} if aud is None else {"aud": aud}
    assert refusal(check_audience, claims, {"dragoman"}) == "audience_mismatch"


def test_audience_comparison_is_exact() -> None:
    assert refusal(check_audience, {"aud": "Dragoman"}, {"dragoman"}) == "audience_mismatch"


@pytest.mark.parametrize(
    "iss", ["https://login.example/", "https://LOGIN.example", "https://login.example ", None]
)
def test_issuer_comparison_is_exact(iss: str | None) -> None:
    reason = refusal(check_issuer, {"iss": iss}, "https://login.example")
    assert reason == "issuer_mismatch"


# -- normalise_typ ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        ("at+jwt", "at+jwt"),
        ("AT+JWT", "at+jwt"),
        ("application/at+jwt", "at+jwt"),
        ("Application/AT+JWT", "at+jwt"),
        (" JWT ", "jwt"),
        ("application/jwt", "jwt"),
        ("text/at+jwt", "text/at+jwt"),
    ],
)
def test_normalise_typ_ignores_case_and_the_application_prefix(value: str, normal: str) -> None:
    assert normalise_typ(value) == normal


# -- HeaderPolicy and check_header ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "none", "RSA-OAEP"])
def test_policy_cannot_allow_symmetric_or_unsigned_algorithms(alg: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        HeaderPolicy(algorithms=frozenset({"RS256", alg}), accepted_types=frozenset({"at+jwt"}))


def test_well_formed_header_is_returned() -> None:
    header = check_header(unsigned({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}), POLICY)
    assert header == CheckedHeader(alg="ES256", kid="k1", typ="at+jwt")


def test_token_over_the_size_limit_is_refused() -> None:
    policy = HeaderPolicy(
        algorithms=frozenset({"RS256"}), accepted_types=frozenset({"at+jwt"}), max_token_bytes=600
    )
    token = unsigned({"alg": "RS256", "kid": "k", "typ": "at+jwt"}, {"pad": "x" * 600})
    assert refusal(check_header, token, policy) == "token_too_large"


@pytest.mark.parametrize("token", ["a.b", "a.b.c.d", "a.b.c.d.e", "", "...."])
def test_token_that_is_not_compact_jws_is_refused(token: str) -> None:
    assert refusal(check_header, token, POLICY) == "token_malformed"


@pytest.mark.parametrize(
    "header_segment",
    [b64url(b"not json"), b64url(b"[1,2]"), "!!!", b64url(b'{"alg":"RS256","kid":5}')],
)
def test_unreadable_header_is_refused(header_segment: str) -> None:
    token = f"{header_segment}.{b64url(b'{}')}.{b64url(b'sig')}"
    assert refusal(check_header, token, POLICY) == "token_malformed"


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "PS256", "ES384", None, 5, ["RS256"]])
def test_algorithm_outside_the_allow_list_is_refused(alg: Any) -> None:
    token = unsigned({"alg": alg, "kid": "k", "typ": "at+jwt"})
    assert refusal(check_header, token, POLICY) == "alg_not_allowed"


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256"])
def test_key_locating_or_key_carrying_header_is_refused(name: str) -> None:
    token = unsigned({"alg": "RS256", "kid": "k", "typ": "at+jwt", name: "x"})
    assert refusal(check_header, token, POLICY) == "header_forbidden"


def test_crit_header_is_refused() -> None:
    token = unsigned({"alg": "RS256", "kid": "k", "typ": "at+jwt", "crit": ["b64"], "b64": True})
    assert refusal(check_header, token, POLICY) == "header_forbidden"


@pytest.mark.parametrize("crit", [None, ["b64"]], ids=["without-crit", "with-crit"])
def test_unencoded_payload_header_is_refused_for_its_header(crit: list[str] | None) -> None:
    # RFC 7797: PyJWT cannot read such a token whole (it wants the payload detached); the
    # header alone says why it is refused, as it did before tokens were read in one pass.
    header = {"alg": "RS256", "kid": "k", "typ": "at+jwt", "b64": False}
    if crit is not None:
        header["crit"] = crit
    token = f"{b64url(json.dumps(header).encode())}..{b64url(b'sig')}"
    assert refusal(check_header, token, POLICY) == "header_forbidden"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "id_token+jwt", "", 5])
def test_type_not_accepted_is_refused(typ: Any) -> None:
    token = unsigned({"alg": "RS256", "kid": "k", "typ": typ})
    assert refusal(check_header, token, POLICY) == "typ_not_allowed"


def test_missing_type_is_refused_by_default() -> None:
    assert refusal(check_header, unsigned({"alg": "RS256", "kid": "k"}), POLICY) == (
        "typ_not_allowed"
    )


def test_missing_type_is_accepted_when_allowed() -> None:
    policy = HeaderPolicy(
        algorithms=frozenset({"RS256"}),
        accepted_types=frozenset({"at+jwt"}),
        allow_missing_type=True,
    )
    assert check_header(unsigned({"alg": "RS256", "kid": "k"}), policy).typ is None


@pytest.mark.parametrize("header", [{}, {"kid": ""}], ids=["absent", "empty"])
def test_missing_kid_is_refused(header: dict[str, Any]) -> None:
    token = unsigned({"alg": "RS256", "typ": "at+jwt", **header})
    assert refusal(check_header, token, POLICY) == "kid_missing"


# -- TrustedKey.from_jwk ----------------------------------------------------------------------


def test_published_public_keys_are_trusted(issuer: DevIssuer) -> None:
    rsa_jwk, ec_jwk = issuer.jwks()["keys"]
    assert isinstance(TrustedKey.from_jwk(rsa_jwk).public_key, rsa.RSAPublicKey)
    ec_key = TrustedKey.from_jwk(ec_jwk)
    assert isinstance(ec_key.public_key, ec.EllipticCurvePublicKey)
    assert (ec_key.kid, ec_key.alg, ec_key.use) == (issuer.ec_kid, "ES256", "sig")


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "k", "alg": "HS256"},
        {"kty": "oct", "kid": "k"},
        {"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB", "alg": "none"},
        {"kty": "EC", "kid": "k", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "OKP", "kid": "k", "crv": "X25519", "x": "A" * 43},
        {"kid": "k"},
    ],
    ids=["symmetric", "symmetric-without-k", "alg-none", "bad-point", "x25519", "no-kty"],
)
def test_unusable_jwk_is_refused_with_value_error(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="JWK"):
        TrustedKey.from_jwk(jwk)


def test_jwk_with_private_key_material_is_refused(issuer: DevIssuer) -> None:
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.rsa_key))
    with pytest.raises(ValueError, match="private"):
        TrustedKey.from_jwk({**private, "kid": "k"})


def test_rsa_jwk_shorter_than_2048_bits_is_refused() -> None:
    # PyJWT only warns about such a key, on every verification; it is not trusted at all.
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(weak)), "kid": "weak"}
    with pytest.raises(ValueError, match="1024 bits"):
        TrustedKey.from_jwk(jwk)


@pytest.mark.parametrize("kid", [None, "", 5])
def test_jwk_without_a_kid_is_refused(issuer: DevIssuer, kid: Any) -> None:
    jwk = {**issuer.jwks()["keys"][0], "kid": kid}
    with pytest.raises(ValueError, match="kid"):
        TrustedKey.from_jwk(jwk)


# -- verify_signature -------------------------------------------------------------------------


def test_genuine_signature_yields_the_claims(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"})
    key = TrustedKey.from_jwk(issuer.jwks()["keys"][0])
    assert verify_signature(token, check_header(token, POLICY), key) == {"sub": "alice"}


def test_signature_by_another_key_is_refused(issuer: DevIssuer) -> None:
    other = DevIssuer(issuer="https://login.example", rsa_kid=issuer.rsa_kid)
    token = other.sign({"sub": "alice"})
    key = TrustedKey.from_jwk(issuer.jwks()["keys"][0])
    assert refusal(verify_signature, token, check_header(token, POLICY), key) == (
        "signature_invalid"
    )


@pytest.mark.parametrize("alg", ["HS256", "HS512", "none"])
def test_symmetric_or_no_algorithm_never_fits_an_asymmetric_key(
    issuer: DevIssuer, alg: str
) -> None:
    # Even if a header with such an alg got past check_header, the key refuses it.
    token = issuer.sign({"sub": "alice"})
    header = CheckedHeader(alg=alg, kid=issuer.rsa_kid, typ="at+jwt")
    key = trusted(issuer.rsa_key.public_key())
    assert refusal(verify_signature, token, header, key) == "key_mismatch"


def test_rsa_key_cannot_verify_es256(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"}, alg="ES256")
    key = trusted(issuer.rsa_key.public_key())
    assert refusal(verify_signature, token, check_header(token, POLICY), key) == "key_mismatch"


def test_ec_key_cannot_verify_rs256(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"})
    key = trusted(issuer.ec_key.public_key())
    assert refusal(verify_signature, token, check_header(token, POLICY), key) == "key_mismatch"


def test_p384_key_cannot_verify_es256(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"}, alg="ES256")
    key = trusted(ec.generate_private_key(ec.SECP384R1()).public_key())
    assert refusal(verify_signature, token, check_header(token, POLICY), key) == "key_mismatch"


def test_ed25519_key_cannot_verify_es256(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"}, alg="ES256")
    key = trusted(ed25519.Ed25519PrivateKey.generate().public_key())
    assert refusal(verify_signature, token, check_header(token, POLICY), key) == "key_mismatch"


def test_key_published_for_another_algorithm_is_refused(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"})
    key = trusted(issuer.rsa_key.public_key(), alg="PS256")
    assert refusal(verify_signature, token, check_header(token, POLICY), key) == "key_mismatch"


def test_key_published_for_encryption_is_refused(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"})
    key = trusted(issuer.rsa_key.public_key(), alg="RS256", use="enc")
    assert refusal(verify_signature, token, check_header(token, POLICY), key) == "key_mismatch"


def test_signature_over_another_payload_is_refused(issuer: DevIssuer) -> None:
    # The header and signature of one genuine token, the payload of another: the signing
    # input is the token as sent, so the splice does not verify.
    alice, mallory = issuer.sign({"sub": "alice"}), issuer.sign({"sub": "mallory"})
    head, _, signature = alice.split(".")
    spliced = f"{head}.{mallory.split('.')[1]}.{signature}"
    key = TrustedKey.from_jwk(issuer.jwks()["keys"][0])
    assert refusal(verify_signature, spliced, check_header(spliced, POLICY), key) == (
        "signature_invalid"
    )


def test_signature_with_a_junk_character_is_refused(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"})
    assert refusal(check_header, token + "!", POLICY) == "token_malformed"


def test_es256_signature_of_the_wrong_length_is_refused(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice"}, alg="ES256")
    head, payload, signature = token.split(".")
    short = f"{head}.{payload}.{b64url(base64.urlsafe_b64decode(signature + '==')[:-1])}"
    key = trusted(issuer.ec_key.public_key())
    assert refusal(verify_signature, short, check_header(short, POLICY), key) == (
        "signature_invalid"
    )


def test_header_checked_for_another_token_does_not_verify_this_one(issuer: DevIssuer) -> None:
    es256 = issuer.sign({"sub": "alice"}, alg="ES256")
    rs256 = issuer.sign({"sub": "alice"})
    key = trusted(issuer.ec_key.public_key())
    assert refusal(verify_signature, rs256, check_header(es256, POLICY), key) == "key_mismatch"


def test_token_read_once_serves_every_step(issuer: DevIssuer) -> None:
    token = issuer.sign({"sub": "alice", "iss": "https://login.example"})
    read = read_jws(token, POLICY.max_token_bytes)
    key = TrustedKey.from_jwk(issuer.jwks()["keys"][0])
    assert unverified_issuer(read) == "https://login.example"
    assert verify_signature(read, check_header(read, POLICY), key)["sub"] == "alice"


async def test_verify_jws_refuses_an_unencoded_payload_token_for_its_header() -> None:
    header = {"alg": "RS256", "kid": "k", "typ": "at+jwt", "b64": False, "crit": ["b64"]}
    token = f"{b64url(json.dumps(header).encode())}..{b64url(b'sig')}"

    class NoKeys:
        async def key(self, kid: str) -> TrustedKey:
            raise AssertionError("no key is looked up for a refused header")

    with pytest.raises(JoseError) as refused:
        await verify_jws(
            token,
            policy=POLICY,
            keys=NoKeys(),
            issuer="https://login.example",
            audiences={"api"},
            now=NOW,
            leeway=LEEWAY,
        )
    assert refused.value.reason == "header_forbidden"


def test_claims_that_are_not_an_object_are_refused(issuer: DevIssuer) -> None:
    header = {"alg": "RS256", "kid": issuer.rsa_kid, "typ": "at+jwt"}
    token = jwt.api_jws.encode(b"[1,2]", issuer.rsa_key, algorithm="RS256", headers=header)
    key = TrustedKey.from_jwk(issuer.jwks()["keys"][0])
    reason = refusal(verify_signature, token, check_header(token, POLICY), key)
    assert reason == "token_malformed"


# -- unverified_issuer ------------------------------------------------------------------------


def test_unverified_issuer_reads_iss_without_checking_anything(issuer: DevIssuer) -> None:
    token = unsigned({"alg": "none"}, {"iss": "https://login.example", "exp": 1})
    assert unverified_issuer(token) == "https://login.example"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        unsigned({"alg": "RS256"}, {"iss": 5}),
        unsigned({"alg": "RS256"}, {"sub": "alice"}),
        f"{b64url(b'{}')}.{b64url(b'[1]')}.{b64url(b'x')}",
        f"{b64url(b'{}')}.{b64url(bytes([0xFF, 0xFE]))}.{b64url(b'x')}",
    ],
    ids=["garbage", "bad-base64", "iss-not-string", "no-iss", "claims-list", "not-utf8"],
)
def test_unverified_issuer_is_none_when_unreadable(token: str) -> None:
    assert unverified_issuer(token) is None
