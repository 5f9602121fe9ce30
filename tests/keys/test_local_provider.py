"""The embedded key provider (SEMANTICS §3, issue 3): ES256 private keys kept in the state
store (SQLite or PostgreSQL), sealed with AES-256-GCM under the master key and bound to their
ref, the key's RFC 7638 thumbprint.

The sealed format (``version 0x01 || 12-byte nonce || ciphertext+tag``, the ref as associated
data) is re-implemented here with ``cryptography`` directly, so these tests do not trust
dragoman's own sealing code to tell them what is stored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.demo.runner import demo_settings
from dragoman.keys.factory import KeyConfigError, master_key_of
from dragoman.keys.jwk import thumbprint
from dragoman.keys.local import LocalProvider
from dragoman.keys.provider import KeyUnavailableError
from dragoman.keys.sealing import decode_master_key, new_master_key
from dragoman.settings import SettingsError, load_settings
from dragoman.state import migrate
from dragoman.state.sql import make_engine

from .support import jwk_verifies

DATA = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjdXNfYWxpY2UifQ"


# -- independent helpers -------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def rfc7638_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3.2: the required members of an EC key, lexicographic, no whitespace."""
    members = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def public_jwk_of(private: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = private.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def seal(master_key: bytes, plaintext: bytes, ref: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return b"\x01" + nonce + AESGCM(master_key).encrypt(nonce, plaintext, ref.encode())


def unseal(master_key: bytes, sealed: bytes, ref: str) -> bytes:
    assert sealed[:1] == b"\x01"
    return AESGCM(master_key).decrypt(sealed[1:13], sealed[13:], ref.encode())


def pkcs8(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def plain_encodings(private: ec.EllipticCurvePrivateKey) -> dict[str, bytes]:
    """Every plain way the private key could sit in storage, as bytes to search for."""
    der = pkcs8(private)
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "pkcs8 der": der,
        "pkcs8 pem": pem,
        "pkcs8 base64": base64.b64encode(der),
        "pkcs8 base64url": b64url(der).encode(),
        "pkcs8 hex": der.hex().encode(),
        "pkcs8 HEX": der.hex().upper().encode(),
        "scalar raw": scalar,
        "scalar hex": scalar.hex().encode(),
        "scalar HEX": scalar.hex().upper().encode(),
        "scalar base64": base64.b64encode(scalar),
        "scalar base64url (jwk d)": b64url(scalar).encode(),
        "scalar decimal": str(private.private_numbers().private_value).encode(),
    }


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated state store (SQLite file, then the real PostgreSQL)."""
    made = make_engine(database_url)
    await migrate.upgrade(made)
    yield made
    await made.dispose()


@pytest.fixture
def provider(engine: AsyncEngine, master_key: bytes) -> LocalProvider:
    return LocalProvider(engine, master_key)


async def sealed_of(engine: AsyncEngine, ref: str) -> bytes:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT sealed FROM local_signing_keys WHERE ref = :ref"), {"ref": ref}
            )
        ).one()
    return bytes(row.sealed)


async def put_row(engine: AsyncEngine, ref: str, sealed: bytes, jwk: dict[str, Any]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO local_signing_keys (ref, sealed, public_jwk, created_at)"
                " VALUES (:ref, :sealed, :jwk, 0)"
            ),
            {"ref": ref, "sealed": sealed, "jwk": json.dumps(jwk)},
        )


async def set_sealed(engine: AsyncEngine, ref: str, sealed: bytes) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE local_signing_keys SET sealed = :sealed WHERE ref = :ref"),
            {"ref": ref, "sealed": sealed},
        )


async def raw_store_bytes(engine: AsyncEngine, database_url: str) -> bytes:
    """What an attacker with the storage gets: the SQLite files (with the WAL), or the
    PostgreSQL rows as the server hands them out (text rendering and raw bytea)."""
    if engine.dialect.name == "sqlite":
        await engine.dispose()
        database = Path(database_url.split("///", 1)[1])
        files = [database, *database.parent.glob(database.name + "-*")]
        return b"".join(p.read_bytes() for p in files if p.is_file())
    import asyncpg

    connection = await asyncpg.connect(
        database_url.replace("postgresql+asyncpg://", "postgresql://")
    )
    try:
        rows = await connection.fetch(
            "SELECT t::text AS whole, t.sealed AS sealed, t.public_jwk::text AS jwk"
            " FROM local_signing_keys t"
        )
    finally:
        await connection.close()
    assert rows
    return b"".join(r["whole"].encode() + bytes(r["sealed"]) + r["jwk"].encode() for r in rows)


# -- encrypted at rest ---------------------------------------------------------------------------


async def test_sealed_value_is_aes_256_gcm_of_the_pkcs8_key_under_the_master_key_and_ref(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes
) -> None:
    made = await provider.create_key()
    der = unseal(master_key, await sealed_of(engine, made.ref), made.ref)
    private = serialization.load_der_private_key(der, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert public_jwk_of(private) == made.public_jwk


async def test_state_store_holds_no_private_key_in_any_plain_encoding(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes, database_url: str
) -> None:
    made = [await provider.create_key() for _ in range(2)]
    for key in made:  # sign once so nothing is written lazily afterwards
        await provider.sign(key.ref, DATA)
    privates = []
    for key in made:
        der = unseal(master_key, await sealed_of(engine, key.ref), key.ref)
        loaded = serialization.load_der_private_key(der, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        privates.append(loaded)
    stored = await raw_store_bytes(engine, database_url)
    assert made[0].public_jwk["x"].encode() in stored  # the dump does hold the key rows
    for private in privates:
        found = [name for name, value in plain_encodings(private).items() if value in stored]
        assert found == []
    assert b"PRIVATE KEY" not in stored


async def test_master_key_is_not_stored(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes, database_url: str
) -> None:
    await provider.create_key()
    stored = await raw_store_bytes(engine, database_url)
    for encoded in (master_key, b64url(master_key).encode(), master_key.hex().encode()):
        assert encoded not in stored


async def test_public_jwk_row_has_public_members_only(
    provider: LocalProvider, engine: AsyncEngine
) -> None:
    made = await provider.create_key()
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT public_jwk FROM local_signing_keys WHERE ref = :ref"),
                {"ref": made.ref},
            )
        ).one()
    jwk = row.public_jwk if isinstance(row.public_jwk, dict) else json.loads(row.public_jwk)
    assert set(jwk) == {"kty", "crv", "x", "y"}


async def test_same_key_is_sealed_with_a_fresh_nonce_each_time(
    provider: LocalProvider, engine: AsyncEngine
) -> None:
    first, second = await provider.create_key(), await provider.create_key()
    nonces = {(await sealed_of(engine, k.ref))[1:13] for k in (first, second)}
    assert len(nonces) == 2


# -- the ref -------------------------------------------------------------------------------------


async def test_ref_is_the_rfc7638_thumbprint_of_the_public_key(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes
) -> None:
    made = await provider.create_key()
    der = unseal(master_key, await sealed_of(engine, made.ref), made.ref)
    private = serialization.load_der_private_key(der, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert made.ref == rfc7638_thumbprint(public_jwk_of(private))
    assert made.ref == rfc7638_thumbprint(made.public_jwk)
    assert len(made.ref) == 43  # base64url of a SHA-256 digest, unpadded


def test_thumbprint_counts_only_the_required_members_of_the_jwk() -> None:
    # RFC 7638 §3.2: kid, alg, use and any other member take no part in the thumbprint.
    jwk = public_jwk_of(ec.generate_private_key(ec.SECP256R1()))
    published = {**jwk, "kid": "x", "alg": "ES256", "use": "sig", "active_from": 1}
    assert thumbprint(published) == thumbprint(jwk) == rfc7638_thumbprint(jwk)


# -- opening: the right master key, the right ref, untouched -----------------------------------


async def test_a_new_provider_with_the_right_master_key_signs_with_the_stored_key(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes
) -> None:
    made = await provider.create_key()
    restarted = LocalProvider(engine, master_key)
    assert jwk_verifies(made.public_jwk, DATA, await restarted.sign(made.ref, DATA))


async def test_wrong_master_key_is_refused_with_a_clear_message_and_no_key_material(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes
) -> None:
    made = await provider.create_key()
    other = secrets.token_bytes(32)
    with pytest.raises(KeyUnavailableError, match="wrong master key") as caught:
        await LocalProvider(engine, other).sign(made.ref, DATA)
    message = str(caught.value)
    sealed = await sealed_of(engine, made.ref)
    for secret in (other, master_key):
        assert b64url(secret) not in message
        assert secret.hex() not in message
        assert base64.b64encode(secret).decode() not in message
    assert sealed.hex() not in message
    assert b64url(sealed) not in message


async def test_sealed_value_copied_under_another_ref_is_refused(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes
) -> None:
    victim, other = await provider.create_key(), await provider.create_key()
    await set_sealed(engine, other.ref, await sealed_of(engine, victim.ref))
    with pytest.raises(KeyUnavailableError, match="does not open"):
        await LocalProvider(engine, master_key).sign(other.ref, DATA)


async def test_sealed_value_copied_into_a_new_row_under_another_ref_is_refused(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes
) -> None:
    victim = await provider.create_key()
    decoy = public_jwk_of(ec.generate_private_key(ec.SECP256R1()))
    decoy_ref = rfc7638_thumbprint(decoy)
    await put_row(engine, decoy_ref, await sealed_of(engine, victim.ref), decoy)
    with pytest.raises(KeyUnavailableError, match="does not open"):
        await LocalProvider(engine, master_key).sign(decoy_ref, DATA)


@pytest.mark.parametrize(
    "where",
    ["version byte", "nonce", "ciphertext", "tag", "truncated", "empty"],
)
async def test_tampered_sealed_value_is_refused(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes, where: str
) -> None:
    made = await provider.create_key()
    sealed = bytearray(await sealed_of(engine, made.ref))
    if where == "version byte":
        sealed[0] ^= 0x01
    elif where == "nonce":
        sealed[5] ^= 0x01
    elif where == "ciphertext":
        sealed[13 + 40] ^= 0x01
    elif where == "tag":
        sealed[-1] ^= 0x01
    elif where == "truncated":
        del sealed[-1]
    else:
        sealed.clear()
    await set_sealed(engine, made.ref, bytes(sealed))
    with pytest.raises(KeyUnavailableError):
        await LocalProvider(engine, master_key).sign(made.ref, DATA)


async def test_key_sealed_under_a_ref_that_is_not_its_thumbprint_is_refused(
    engine: AsyncEngine, master_key: bytes
) -> None:
    # Correctly sealed by someone holding the master key, yet named by another ref: the key
    # a ref names must be the key whose thumbprint it is.
    private = ec.generate_private_key(ec.SECP256R1())
    impostor = public_jwk_of(ec.generate_private_key(ec.SECP256R1()))
    ref = rfc7638_thumbprint(impostor)
    await put_row(engine, ref, seal(master_key, pkcs8(private), ref), impostor)
    with pytest.raises(KeyUnavailableError, match="does not match its ref"):
        await LocalProvider(engine, master_key).sign(ref, DATA)


async def test_disabled_key_is_refused_by_every_provider_instance(
    provider: LocalProvider, engine: AsyncEngine, master_key: bytes
) -> None:
    made = await provider.create_key()
    await provider.disable(made.ref)
    with pytest.raises(KeyUnavailableError, match="disabled"):
        await provider.sign(made.ref, DATA)
    with pytest.raises(KeyUnavailableError, match="disabled"):
        await LocalProvider(engine, master_key).sign(made.ref, DATA)


async def test_unknown_ref_is_refused(provider: LocalProvider) -> None:
    with pytest.raises(KeyUnavailableError):
        await provider.sign(
            rfc7638_thumbprint(public_jwk_of(ec.generate_private_key(ec.SECP256R1()))), DATA
        )


async def test_provider_with_a_wrong_master_key_makes_no_key(
    provider: LocalProvider, engine: AsyncEngine
) -> None:
    # It would seal a key that no correctly configured instance could open once current.
    existing = await provider.create_key()
    stranger = LocalProvider(engine, secrets.token_bytes(32))
    with pytest.raises(KeyUnavailableError, match="master key"):
        await stranger.create_key()
    assert await provider.list_keys() == [existing.ref]


async def test_provider_on_an_empty_store_makes_its_first_key_with_any_master_key(
    engine: AsyncEngine,
) -> None:
    made = await LocalProvider(engine, secrets.token_bytes(32)).create_key()
    assert made.ref == rfc7638_thumbprint(made.public_jwk)


# -- the master key in settings ------------------------------------------------------------------


def settings_data(tmp_path: Path, keys: dict[str, Any]) -> dict[str, Any]:
    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8081",
        issuer="http://127.0.0.1:8082",
        console="http://127.0.0.1:8083",
        state_dir=tmp_path,
    )
    data["keys"] = keys
    return data


@pytest.mark.parametrize(
    "master_key",
    [
        b64url(secrets.token_bytes(16)),
        b64url(secrets.token_bytes(31)),
        b64url(secrets.token_bytes(33)),
        b64url(secrets.token_bytes(64)),
        "x",
        "not base64url!",
        "",
    ],
    ids=["16-bytes", "31-bytes", "33-bytes", "64-bytes", "one-char", "not-base64url", "empty"],
)
def test_settings_refuse_a_master_key_that_is_not_32_bytes_of_base64url(
    tmp_path: Path, master_key: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=settings_data(tmp_path, {"master_key": master_key}))
    assert [p.key for p in caught.value.problems] == ["keys.master_key"]
    if master_key:
        assert master_key not in str(caught.value)


def test_settings_accept_a_32_byte_base64url_master_key(tmp_path: Path) -> None:
    settings = load_settings(overrides=settings_data(tmp_path, {"master_key": new_master_key()}))
    assert settings.keys.master_key is not None
    assert len(master_key_of(settings.keys)) == 32


def test_settings_refuse_the_local_provider_without_a_master_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=settings_data(tmp_path, {"provider": "local"}))
    [problem] = caught.value.problems
    assert problem.key == "keys"
    assert "master_key" in problem.message


def test_settings_refuse_both_master_key_and_master_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(new_master_key())
    keys = {"master_key": new_master_key(), "master_key_file": str(path)}
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=settings_data(tmp_path, keys))
    assert [p.key for p in caught.value.problems] == ["keys"]


def test_settings_report_a_missing_master_key_file_naming_the_setting(tmp_path: Path) -> None:
    keys = {"master_key_file": str(tmp_path / "no-such.key")}
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=settings_data(tmp_path, keys))
    assert [p.key for p in caught.value.problems] == ["keys.master_key_file"]
    assert "no-such.key" in str(caught.value)


def test_master_key_file_that_vanishes_after_loading_is_reported_naming_the_setting(
    tmp_path: Path,
) -> None:
    path = tmp_path / "master.key"
    path.write_text(new_master_key() + "\n")
    settings = load_settings(overrides=settings_data(tmp_path, {"master_key_file": str(path)}))
    path.unlink()
    with pytest.raises(KeyConfigError, match=r"keys\.master_key_file"):
        master_key_of(settings.keys)


def test_master_key_file_with_a_short_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    short = b64url(secrets.token_bytes(16))
    path = tmp_path / "master.key"
    path.write_text(short)
    settings = load_settings(overrides=settings_data(tmp_path, {"master_key_file": str(path)}))
    with pytest.raises(KeyConfigError, match="32 bytes") as caught:
        master_key_of(settings.keys)
    assert short not in str(caught.value)


def test_new_master_key_is_32_random_bytes_of_base64url() -> None:
    first, second = new_master_key(), new_master_key()
    assert set(first) <= set(string.ascii_letters + string.digits + "-_")
    assert len(decode_master_key(first)) == 32
    assert first != second
