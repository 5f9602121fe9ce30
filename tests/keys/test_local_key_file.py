"""The embedded key provider (SEMANTICS §3): ES256 keys in a local file, private keys sealed
with AES-256-GCM under the master key, the active key named explicitly."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import stat
import string
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dragoman.demo.runner import demo_settings
from dragoman.keys.factory import open_key_provider
from dragoman.keys.local import KeyFileError, LocalKeyFile, decode_master_key, new_master_key
from dragoman.keys.provider import KeyUnavailableError
from dragoman.settings import SettingsError, load_settings

from .support import (
    b64url,
    key_file_document,
    read_document,
    seal,
    thumbprint_of,
    unseal,
    write_document,
)


def loaded(path: Path, master_key: bytes) -> LocalKeyFile:
    provider = LocalKeyFile(path, master_key)
    provider.load(create=False)
    return provider


def two_key_file(path: Path, master_key: bytes, *, active: int, active_last: bool) -> list[str]:
    """A file with two keys; ``active`` (0 or 1) names the active one; returns both kids."""
    entries = [seal(master_key, ec.generate_private_key(ec.SECP256R1())) for _ in range(2)]
    kids = [e["kid"] for e in entries]
    ordered = entries if (active == 1) == active_last else list(reversed(entries))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_document(path, key_file_document(ordered, kids[active]))
    return kids


# -- encrypted at rest --------------------------------------------------------------------------


def test_key_file_holds_no_pem_private_key(key_file: LocalKeyFile, key_path: Path) -> None:
    text = key_path.read_text("utf-8")
    assert "-----BEGIN" not in text
    assert "PRIVATE KEY" not in text


def test_key_file_does_not_contain_the_private_key_in_any_plain_encoding(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes
) -> None:
    raw = key_path.read_bytes()
    text = raw.decode("utf-8")
    [entry] = read_document(key_path)["keys"]
    der = unseal(master_key, entry)
    private = serialization.load_der_private_key(der, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    assert der not in raw
    for encoded in (
        base64.b64encode(der).decode(),
        b64url(der),
        der.hex(),
        b64url(scalar),  # the JWK "d" member
        base64.b64encode(scalar).decode(),
        scalar.hex(),
    ):
        assert encoded not in text
    assert "d" not in entry["public_jwk"]


def test_private_key_is_sealed_with_aes_256_gcm_under_the_master_key_and_its_kid(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes
) -> None:
    [entry] = read_document(key_path)["keys"]
    assert entry["private_key"]["enc"] == "A256GCM"
    assert len(base64.b64decode(entry["private_key"]["nonce"])) == 12
    private = serialization.load_der_private_key(unseal(master_key, entry), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert thumbprint_of(private.public_key()) == entry["kid"]


# -- refusals on load ---------------------------------------------------------------------------


def test_wrong_master_key_is_refused_with_a_clear_error(
    key_file: LocalKeyFile, key_path: Path
) -> None:
    other = secrets.token_bytes(32)
    with pytest.raises(KeyFileError, match="wrong master key") as caught:
        loaded(key_path, other)
    assert str(key_path) in str(caught.value)
    assert b64url(other) not in str(caught.value)


@pytest.mark.parametrize("member", ["ciphertext", "nonce"])
def test_tampered_sealed_key_is_refused(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes, member: str
) -> None:
    document = read_document(key_path)
    sealed = document["keys"][0]["private_key"]
    data = bytearray(base64.b64decode(sealed[member]))
    data[len(data) // 2] ^= 0x01
    sealed[member] = base64.b64encode(bytes(data)).decode()
    write_document(key_path, document)
    with pytest.raises(KeyFileError, match="does not decrypt"):
        loaded(key_path, master_key)


def test_sealed_key_moved_under_another_kid_is_refused(tmp_path: Path, master_key: bytes) -> None:
    # Two genuine key files under the same master key; B's entry gets A's sealed key.
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    LocalKeyFile(a, master_key).load(create=True)
    LocalKeyFile(b, master_key).load(create=True)
    document = read_document(b)
    document["keys"][0]["private_key"] = read_document(a)["keys"][0]["private_key"]
    write_document(b, document)
    with pytest.raises(KeyFileError, match="does not decrypt"):
        loaded(b, master_key)


def test_entry_renamed_to_another_kid_is_refused(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes
) -> None:
    document = read_document(key_path)
    renamed = thumbprint_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    document["keys"][0]["kid"] = renamed
    document["active_kid"] = renamed
    write_document(key_path, document)
    with pytest.raises(KeyFileError, match="does not decrypt"):
        loaded(key_path, master_key)


def test_key_sealed_under_a_kid_that_is_not_its_thumbprint_is_refused(
    key_path: Path, master_key: bytes
) -> None:
    # Even correctly sealed (by someone holding the master key), a key must be named by
    # its own thumbprint.
    private = ec.generate_private_key(ec.SECP256R1())
    entry = seal(master_key, private, kid="chosen-kid")
    key_path.parent.mkdir(parents=True)
    write_document(key_path, key_file_document([entry], "chosen-kid"))
    with pytest.raises(KeyFileError, match="does not match its kid"):
        loaded(key_path, master_key)


@pytest.mark.parametrize(
    "breakage",
    [
        "entry without private_key",
        "entry without kid",
        "keys is not a list of entries",
        "sealed key that is not base64",
    ],
)
def test_malformed_key_file_is_refused_with_a_key_file_error(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes, breakage: str
) -> None:
    document = read_document(key_path)
    entry = document["keys"][0]
    if breakage == "entry without private_key":
        del entry["private_key"]
    elif breakage == "entry without kid":
        del entry["kid"]
    elif breakage == "keys is not a list of entries":
        document["keys"] = {"kid": entry["kid"]}
    else:
        entry["private_key"]["nonce"] = "%%%"
    write_document(key_path, document)
    with pytest.raises(KeyFileError, match=str(key_path)):
        loaded(key_path, master_key)


def test_missing_key_file_is_refused_without_create(key_path: Path, master_key: bytes) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        loaded(key_path, master_key)
    assert not key_path.exists()


# -- the active key -----------------------------------------------------------------------------


@pytest.mark.parametrize("active_last", [False, True], ids=["listed-first", "listed-last"])
async def test_active_key_is_the_one_named_by_active_kid_wherever_it_is_listed(
    key_path: Path, master_key: bytes, active_last: bool
) -> None:
    kids = two_key_file(key_path, master_key, active=1, active_last=active_last)
    provider = loaded(key_path, master_key)
    assert (await provider.current()).kid == kids[1]
    assert [k["kid"] for k in provider.describe() if k["active"]] == [kids[1]]


def test_file_whose_active_kid_is_not_in_it_is_refused(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes
) -> None:
    document = read_document(key_path)
    document["active_kid"] = thumbprint_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    write_document(key_path, document)
    with pytest.raises(KeyFileError, match="active key is not in the file"):
        loaded(key_path, master_key)


def test_file_without_an_active_kid_is_refused(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes
) -> None:
    document = read_document(key_path)
    del document["active_kid"]
    write_document(key_path, document)
    with pytest.raises(KeyFileError, match="active key is not in the file"):
        loaded(key_path, master_key)


# -- kid, creation, permissions -----------------------------------------------------------------


async def test_kid_is_the_rfc7638_thumbprint_of_the_public_key(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes
) -> None:
    [entry] = read_document(key_path)["keys"]
    private = serialization.load_der_private_key(unseal(master_key, entry), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    expected = thumbprint_of(private.public_key())
    assert (await key_file.current()).kid == expected
    assert entry["kid"] == expected
    assert len(expected) == 43  # base64url of a SHA-256 digest, unpadded


def test_second_load_with_create_keeps_the_existing_key(
    key_file: LocalKeyFile, key_path: Path, master_key: bytes
) -> None:
    before = key_path.read_bytes()
    again = LocalKeyFile(key_path, master_key)
    again.load(create=True)
    assert key_path.read_bytes() == before
    assert [k["kid"] for k in again.describe()] == [k["kid"] for k in key_file.describe()]
    assert len(read_document(key_path)["keys"]) == 1


async def test_concurrent_first_loads_create_exactly_one_key(
    key_path: Path, master_key: bytes
) -> None:
    providers = [LocalKeyFile(key_path, master_key) for _ in range(8)]
    await asyncio.gather(*(asyncio.to_thread(p.load, create=True) for p in providers))
    kids = {(await p.current()).kid for p in providers}
    assert len(kids) == 1
    assert len(read_document(key_path)["keys"]) == 1


def test_key_file_is_readable_by_its_owner_only_whatever_the_umask(
    key_path: Path, master_key: bytes
) -> None:
    previous = os.umask(0)
    try:
        LocalKeyFile(key_path, master_key).load(create=True)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


# -- the master key -----------------------------------------------------------------------------


def test_master_key_of_16_bytes_is_refused() -> None:
    with pytest.raises(KeyFileError, match="must be 32 bytes"):
        decode_master_key(b64url(secrets.token_bytes(16)))


def test_master_key_that_is_not_base64url_is_refused() -> None:
    with pytest.raises(KeyFileError, match="not base64url"):
        decode_master_key("x")


def test_new_master_key_is_32_bytes_of_base64url() -> None:
    text = new_master_key()
    assert set(text) <= set(string.ascii_letters + string.digits + "-_")
    assert len(decode_master_key(text)) == 32


def _settings_with_master_key(tmp_path: Path, master_key: str) -> dict[str, Any]:
    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8081",
        issuer="http://127.0.0.1:8082",
        console="http://127.0.0.1:8083",
        state_dir=tmp_path,
    )
    data["keys"] = {"path": str(tmp_path / "keys.json"), "master_key": master_key}
    return data


@pytest.mark.parametrize(
    "master_key",
    [b64url(secrets.token_bytes(16)), b64url(secrets.token_bytes(33)), "x", ""],
    ids=["16-bytes", "33-bytes", "not-base64url", "empty"],
)
def test_settings_refuse_a_master_key_that_is_not_32_bytes_of_base64url(
    tmp_path: Path, master_key: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=_settings_with_master_key(tmp_path, master_key))
    assert [p.key for p in caught.value.problems] == ["keys.master_key"]
    if master_key:
        assert master_key not in str(caught.value)


def test_settings_accept_a_32_byte_base64url_master_key(tmp_path: Path) -> None:
    settings = load_settings(overrides=_settings_with_master_key(tmp_path, new_master_key()))
    assert settings.keys.master_key is not None


def test_unreadable_master_key_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    data = _settings_with_master_key(tmp_path, new_master_key())
    data["keys"] = {"path": str(tmp_path / "keys.json"), "master_key_file": str(tmp_path / "no")}
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=data)
    assert [p.key for p in caught.value.problems] == ["keys.master_key_file"]
    assert not (tmp_path / "keys.json").exists()


def test_a_master_key_file_that_vanishes_after_load_is_refused_naming_the_setting(
    tmp_path: Path,
) -> None:
    data = _settings_with_master_key(tmp_path, new_master_key())
    (tmp_path / "master.key").write_text(new_master_key())
    data["keys"] = {
        "path": str(tmp_path / "keys.json"),
        "master_key_file": str(tmp_path / "master.key"),
    }
    settings = load_settings(overrides=data)
    (tmp_path / "master.key").unlink()
    with pytest.raises(KeyFileError, match=r"keys\.master_key_file"):
        open_key_provider(settings.keys, create=True)
    assert not (tmp_path / "keys.json").exists()


# -- signing ------------------------------------------------------------------------------------


async def test_signature_is_64_byte_r_s_that_pyjwt_verifies(key_file: LocalKeyFile) -> None:
    current = await key_file.current()
    header = {"alg": "ES256", "typ": "at+jwt", "kid": current.kid}
    claims = {"sub": "cus_alice", "scope": "payment_methods:list"}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = await key_file.sign(current.kid, signing_input.encode())
    assert len(signature) == 64
    token = signing_input + "." + b64url(signature)
    [published] = key_file.jwks()["keys"]
    decoded = jwt.decode(token, jwt.PyJWK(published).key, algorithms=["ES256"])
    assert decoded == claims


async def test_sign_with_a_kid_that_is_not_active_is_refused(
    key_path: Path, master_key: bytes
) -> None:
    kids = two_key_file(key_path, master_key, active=0, active_last=False)
    provider = loaded(key_path, master_key)
    with pytest.raises(KeyUnavailableError):
        await provider.sign(kids[1], b"payload")


async def test_sign_with_an_unknown_kid_is_refused(key_file: LocalKeyFile) -> None:
    with pytest.raises(KeyUnavailableError):
        await key_file.sign("no-such-kid", b"payload")


def test_published_key_set_has_public_members_only(key_file: LocalKeyFile) -> None:
    [published] = key_file.jwks()["keys"]
    assert set(published) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
