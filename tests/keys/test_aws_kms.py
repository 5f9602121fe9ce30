"""The aws-kms provider beyond the shared contract: alias moves, failures, key types, DIGEST.

Most tests talk to moto's KMS server on 127.0.0.1 (see contract/aws_kms_fixture.py); the
throttling test talks to a small HTTP server that answers like a throttled KMS; a few tests
that need answers moto cannot give (paginated listings, malformed signatures) use botocore's
Stubber on a real boto3 client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from dragoman.keys.aws_kms import AwsKmsProvider
from dragoman.keys.jwk import ec_public_jwk
from dragoman.keys.provider import KeyProvider, KeyUnavailableError

from .contract.aws_kms_fixture import (
    FAKE_SECRET,
    REGION,
    kms_environment,
    kms_server,
    unique_name,
)
from .support import jwk_verifies

DATA = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjdXNfYWxpY2UifQ"
MISSING_KEY = "0b0e5f4e-1c3d-4b7a-9a55-2f4a6f1d9e01"


@pytest.fixture
def endpoint() -> Iterator[str]:
    with kms_server() as url:
        yield url


@pytest.fixture
def kms(endpoint: str) -> Iterator[Any]:
    """A plain boto3 client on the same server, to look behind the provider's back."""
    client = boto3.client("kms", region_name=REGION, endpoint_url=endpoint)
    yield client
    client.close()


@pytest.fixture
async def provider(endpoint: str) -> AsyncIterator[AwsKmsProvider]:
    made = AwsKmsProvider(
        region=REGION,
        endpoint_url=endpoint,
        alias=f"alias/{unique_name('dragoman-test')}",
        tag_key=unique_name("dragoman-test"),
    )
    yield made
    await made.close()


def test_the_provider_keeps_the_protocol() -> None:
    provider: KeyProvider = AwsKmsProvider(region=REGION)
    assert provider.name == "aws-kms"


def alias_target(kms: Any, alias: str) -> str | None:
    for page in kms.get_paginator("list_aliases").paginate():
        for entry in page["Aliases"]:
            if entry["AliasName"] == alias:
                target: str | None = entry.get("TargetKeyId")
                return target
    return None


# mark_current moves the alias


async def test_mark_current_creates_then_moves_the_alias(
    provider: AwsKmsProvider, kms: Any
) -> None:
    first = await provider.create_key()
    second = await provider.create_key()
    assert alias_target(kms, provider.alias) is None

    await provider.mark_current(first.ref)
    assert alias_target(kms, provider.alias) == first.ref
    assert kms.describe_key(KeyId=provider.alias)["KeyMetadata"]["KeyId"] == first.ref

    await provider.mark_current(second.ref)
    assert alias_target(kms, provider.alias) == second.ref
    assert kms.describe_key(KeyId=provider.alias)["KeyMetadata"]["KeyId"] == second.ref
    names = {a["AliasName"] for a in kms.list_aliases(KeyId=first.ref)["Aliases"]}
    assert provider.alias not in names

    await provider.mark_current(second.ref)  # idempotent
    assert alias_target(kms, provider.alias) == second.ref


async def test_mark_current_of_an_unknown_key_leaves_the_alias(
    provider: AwsKmsProvider, kms: Any
) -> None:
    key = await provider.create_key()
    await provider.mark_current(key.ref)
    with pytest.raises(KeyUnavailableError, match="NotFoundException"):
        await provider.mark_current(MISSING_KEY)
    assert alias_target(kms, provider.alias) == key.ref


async def test_a_second_instance_moves_the_alias_another_made(
    endpoint: str, provider: AwsKmsProvider, kms: Any
) -> None:
    key = await provider.create_key()
    await provider.mark_current(key.ref)
    other = AwsKmsProvider(region=REGION, endpoint_url=endpoint, alias=provider.alias)
    try:
        newer = await other.create_key()
        await other.mark_current(newer.ref)
    finally:
        await other.close()
    assert alias_target(kms, provider.alias) == newer.ref


# refs name one key: aliases and junk are refused, never resolved


async def test_an_alias_is_not_a_ref(provider: AwsKmsProvider) -> None:
    key = await provider.create_key()
    await provider.mark_current(key.ref)
    for ref in (provider.alias, "alias/aws/ebs", "", "../" + key.ref):
        with pytest.raises(KeyUnavailableError, match="not a KMS key id"):
            await provider.sign(ref, DATA)
        with pytest.raises(KeyUnavailableError):
            await provider.public_jwk(ref)


async def test_a_key_arn_is_a_ref(provider: AwsKmsProvider, kms: Any) -> None:
    key = await provider.create_key()
    arn = kms.describe_key(KeyId=key.ref)["KeyMetadata"]["Arn"]
    assert await provider.public_jwk(arn) == key.public_jwk
    assert jwk_verifies(key.public_jwk, DATA, await provider.sign(arn, DATA))


# keys that are not ES256 keys are refused


@pytest.mark.parametrize(
    ("key_spec", "key_usage", "reason"),
    [
        ("ECC_NIST_P384", "SIGN_VERIFY", "not an ECC_NIST_P256 key"),
        ("ECC_NIST_P521", "SIGN_VERIFY", "not an ECC_NIST_P256 key"),
        ("ECC_SECG_P256K1", "SIGN_VERIFY", "not an ECC_NIST_P256 key"),
        ("RSA_2048", "SIGN_VERIFY", "not an ECC_NIST_P256 key"),
        ("ECC_NIST_P256", "KEY_AGREEMENT", "not a SIGN_VERIFY key"),
        ("RSA_2048", "ENCRYPT_DECRYPT", "not a SIGN_VERIFY key"),
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "not a SIGN_VERIFY key"),
    ],
)
async def test_a_key_that_is_not_a_p256_signing_key_is_refused(
    provider: AwsKmsProvider, kms: Any, key_spec: str, key_usage: str, reason: str
) -> None:
    created = kms.create_key(KeySpec=key_spec, KeyUsage=key_usage)["KeyMetadata"]["KeyId"]
    with pytest.raises(KeyUnavailableError, match=reason):
        await provider.public_jwk(created)
    with pytest.raises(KeyUnavailableError, match=reason):  # refused before any Sign call
        await provider.sign(created, DATA)


# DIGEST, not RAW: messages of any length


async def test_large_messages_are_signed_as_a_local_sha256_digest(endpoint: str) -> None:
    sent: list[dict[str, Any]] = []
    with kms_environment():
        client = boto3.client("kms", region_name=REGION, endpoint_url=endpoint)
        client.meta.events.register(
            "provide-client-params.kms.Sign", lambda params, **_: sent.append(dict(params))
        )
        provider = AwsKmsProvider(region=REGION, client=client, tag_key=unique_name("t"))
        try:
            key = await provider.create_key()
            for data in (b"x" * 4096, b"y" * 4097, b"z" * 100_000):
                assert jwk_verifies(key.public_jwk, data, await provider.sign(key.ref, data))
            # The endpoint holds KMS's RAW limit: the same large message sent RAW is refused.
            with pytest.raises(ClientError, match="ValidationException"):
                client.sign(
                    KeyId=key.ref,
                    Message=b"y" * 4097,
                    MessageType="RAW",
                    SigningAlgorithm="ECDSA_SHA_256",
                )
        finally:
            await provider.close()
            client.close()
    ours = sent[:3]
    assert [p["MessageType"] for p in ours] == ["DIGEST"] * 3
    assert [p["SigningAlgorithm"] for p in ours] == ["ECDSA_SHA_256"] * 3
    assert [p["Message"] for p in ours] == [
        hashlib.sha256(d).digest() for d in (b"x" * 4096, b"y" * 4097, b"z" * 100_000)
    ]


def test_the_test_endpoint_signs_a_digest_as_it_is(kms: Any) -> None:
    """The server behind these tests keeps KMS's DIGEST semantics (moto alone does not)."""
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    assert isinstance(public, ec.EllipticCurvePublicKey)
    digest = hashlib.sha256(DATA).digest()
    signature = kms.sign(
        KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256"
    )["Signature"]
    public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    raw_signature = kms.sign(
        KeyId=key_id, Message=DATA, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256"
    )["Signature"]
    public.verify(raw_signature, DATA, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ClientError, match="ValidationException"):
        kms.sign(KeyId=key_id, Message=DATA, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")
    kms.disable_key(KeyId=key_id)
    with pytest.raises(ClientError, match="DisabledException"):
        kms.sign(
            KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256"
        )


# listing and disabling


async def test_only_keys_with_the_tag_are_listed_disabled_ones_too(
    provider: AwsKmsProvider, kms: Any
) -> None:
    ours = await provider.create_key()
    disabled = await provider.create_key()
    await provider.disable(disabled.ref)
    untagged = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    other_value = kms.create_key(
        KeySpec="ECC_NIST_P256",
        KeyUsage="SIGN_VERIFY",
        Tags=[{"TagKey": "dragoman-other", "TagValue": "signing"}],
    )
    listed = await provider.list_keys()
    assert sorted(listed) == sorted([ours.ref, disabled.ref])
    assert untagged["KeyMetadata"]["KeyId"] not in listed
    assert other_value["KeyMetadata"]["KeyId"] not in listed


async def test_disable_makes_kms_refuse_the_key(provider: AwsKmsProvider, kms: Any) -> None:
    key = await provider.create_key()
    await provider.disable(key.ref)
    assert kms.describe_key(KeyId=key.ref)["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(KeyUnavailableError, match="DisabledException"):
        await provider.sign(key.ref, DATA)
    await provider.disable(key.ref)
    with pytest.raises(KeyUnavailableError, match="NotFoundException"):
        await provider.disable(MISSING_KEY)


async def test_a_key_pending_deletion_cannot_sign(provider: AwsKmsProvider, kms: Any) -> None:
    key = await provider.create_key()
    assert jwk_verifies(key.public_jwk, DATA, await provider.sign(key.ref, DATA))
    kms.schedule_key_deletion(KeyId=key.ref, PendingWindowInDays=7)
    with pytest.raises(KeyUnavailableError, match="KMSInvalidStateException"):
        await provider.sign(key.ref, DATA)


# unreachable and throttled endpoints


def public_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def every_operation_fails(provider: AwsKmsProvider) -> list[str]:
    messages = []
    for call in (
        provider.create_key(),
        provider.sign(MISSING_KEY, DATA),
        provider.public_jwk(MISSING_KEY),
        provider.list_keys(),
        provider.disable(MISSING_KEY),
        provider.mark_current(MISSING_KEY),
    ):
        with pytest.raises(KeyUnavailableError) as caught:
            await call
        messages.append(str(caught.value))
    return messages


async def test_an_unreachable_endpoint_is_key_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with kms_environment():
        provider = AwsKmsProvider(
            region=REGION,
            endpoint_url=f"http://127.0.0.1:{closed_port()}",
            max_attempts=1,
            timeout=2,
        )
        try:
            messages = await every_operation_fails(provider)
        finally:
            await provider.close()
    assert all("EndpointConnectionError" in m for m in messages), messages
    assert not any(FAKE_SECRET in m for m in messages)
    assert FAKE_SECRET not in caplog.text


THROTTLED_KEY = ec.generate_private_key(ec.SECP256R1())


class ThrottledKms(BaseHTTPRequestHandler):
    """Answers GetPublicKey, and every other KMS call as a throttled KMS does."""

    calls: list[str]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        target = self.headers.get("X-Amz-Target", "")
        self.calls.append(target)
        if target == "TrentService.GetPublicKey":
            status, answer = (
                200,
                {
                    "KeyId": MISSING_KEY,
                    "KeyUsage": "SIGN_VERIFY",
                    "KeySpec": "ECC_NIST_P256",
                    "SigningAlgorithms": ["ECDSA_SHA_256"],
                    "PublicKey": base64.b64encode(public_der(THROTTLED_KEY)).decode(),
                },
            )
        else:
            status, answer = 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def throttled() -> Iterator[tuple[str, list[str]]]:
    calls: list[str] = []
    handler = type("Handler", (ThrottledKms,), {"calls": calls})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


async def test_a_throttled_endpoint_is_retried_then_key_unavailable(
    throttled: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url, calls = throttled
    with kms_environment():
        provider = AwsKmsProvider(region=REGION, endpoint_url=url, max_attempts=2, timeout=2)
        try:
            assert await provider.public_jwk(MISSING_KEY) == ec_public_jwk(
                THROTTLED_KEY.public_key()
            )
            with pytest.raises(KeyUnavailableError, match=r"sign failed \(ThrottlingException\)"):
                await provider.sign(MISSING_KEY, DATA)
            with pytest.raises(KeyUnavailableError, match=r"list_keys failed \(Throttling"):
                await provider.list_keys()
        finally:
            await provider.close()
    # The public key was fetched once; each throttled call was tried twice (max_attempts=2).
    assert (
        calls
        == ["TrentService.GetPublicKey"] + ["TrentService.Sign"] * 2 + ["TrentService.ListKeys"] * 2
    )
    assert FAKE_SECRET not in caplog.text


# what the service answers is checked, not trusted


def stubbed_client() -> tuple[Any, Stubber]:
    client = boto3.client("kms", region_name=REGION, endpoint_url="http://127.0.0.1:9")
    return client, Stubber(client)


def public_key_answer(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return {
        "KeyId": MISSING_KEY,
        "KeyUsage": "SIGN_VERIFY",
        "KeySpec": "ECC_NIST_P256",
        "SigningAlgorithms": ["ECDSA_SHA_256"],
        "PublicKey": public_der(key),
    }


def sign_answer(signature: bytes) -> dict[str, Any]:
    return {"KeyId": MISSING_KEY, "Signature": signature, "SigningAlgorithm": "ECDSA_SHA_256"}


async def test_a_malformed_or_foreign_signature_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(DATA).digest()
    good = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    ber = bytes([0x30, 0x81]) + good[1:]  # the same signature, long-form length
    foreign = stranger.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    with kms_environment():
        client, stubber = stubbed_client()
        stubber.add_response("get_public_key", public_key_answer(key))
        stubber.add_response("sign", sign_answer(ber))
        stubber.add_response("sign", sign_answer(foreign))
        stubber.add_response("sign", sign_answer(good))
        provider = AwsKmsProvider(region=REGION, client=client)
        with stubber:
            with pytest.raises(KeyUnavailableError, match="malformed DER"):
                await provider.sign(MISSING_KEY, DATA)
            with pytest.raises(KeyUnavailableError, match="does not verify"):
                await provider.sign(MISSING_KEY, DATA)
            raw = await provider.sign(MISSING_KEY, DATA)
            stubber.assert_no_pending_responses()
        assert jwk_verifies(ec_public_jwk(key.public_key()), DATA, raw)
        await provider.close()
        client.close()


async def test_listing_follows_every_page_and_skips_keys_it_may_not_read() -> None:
    ids = [f"0b0e5f4e-1c3d-4b7a-9a55-2f4a6f1d9e0{n}" for n in range(5)]
    mine = [{"TagKey": "dragoman", "TagValue": "signing"}]
    with kms_environment():
        client, stubber = stubbed_client()
        stubber.add_response(
            "list_keys",
            {"Keys": [{"KeyId": i} for i in ids[:3]], "Truncated": True, "NextMarker": "m1"},
            {},
        )
        stubber.add_response(
            "list_resource_tags",
            {"Tags": [{"TagKey": "team", "TagValue": "a"}], "Truncated": True, "NextMarker": "t"},
            {"KeyId": ids[0]},
        )
        stubber.add_response(
            "list_resource_tags",
            {"Tags": mine, "Truncated": False},
            {"KeyId": ids[0], "Marker": "t"},
        )
        stubber.add_client_error(
            "list_resource_tags", "AccessDeniedException", expected_params={"KeyId": ids[1]}
        )
        stubber.add_response("list_resource_tags", {"Tags": []}, {"KeyId": ids[2]})
        stubber.add_response(
            "list_keys", {"Keys": [{"KeyId": i} for i in ids[3:]]}, {"Marker": "m1"}
        )
        stubber.add_client_error(
            "list_resource_tags", "NotFoundException", expected_params={"KeyId": ids[3]}
        )
        stubber.add_response(
            "list_resource_tags",
            {"Tags": [{"TagKey": "dragoman", "TagValue": "other"}, *mine]},
            {"KeyId": ids[4]},
        )
        provider = AwsKmsProvider(region=REGION, client=client)
        with stubber:
            assert await provider.list_keys() == [ids[0], ids[4]]
            stubber.assert_no_pending_responses()
        await provider.close()
        client.close()


async def test_a_listing_that_fails_otherwise_is_key_unavailable() -> None:
    with kms_environment():
        client, stubber = stubbed_client()
        stubber.add_response("list_keys", {"Keys": [{"KeyId": MISSING_KEY}]}, {})
        stubber.add_client_error("list_resource_tags", "KMSInternalException", http_status_code=500)
        provider = AwsKmsProvider(region=REGION, client=client, max_attempts=1)
        with stubber, pytest.raises(KeyUnavailableError, match="KMSInternalException"):
            await provider.list_keys()
        await provider.close()
        client.close()


@pytest.mark.parametrize(("state", "refused"), [("PendingDeletion", False), ("Enabled", True)])
async def test_disable_accepts_a_key_that_already_cannot_sign(state: str, refused: bool) -> None:
    with kms_environment():
        client, stubber = stubbed_client()
        stubber.add_client_error("disable_key", "KMSInvalidStateException")
        stubber.add_response(
            "describe_key", {"KeyMetadata": {"KeyId": MISSING_KEY, "KeyState": state}}
        )
        provider = AwsKmsProvider(region=REGION, client=client)
        with stubber:
            if refused:
                with pytest.raises(KeyUnavailableError, match="KMSInvalidStateException"):
                    await provider.disable(MISSING_KEY)
            else:
                await provider.disable(MISSING_KEY)
        await provider.close()
        client.close()


# lifecycle and settings


async def test_a_closed_provider_refuses_and_leaves_a_given_client_open(kms: Any) -> None:
    provider = AwsKmsProvider(region=REGION, client=kms, tag_key=unique_name("t"))
    key = await provider.create_key()
    await provider.close()
    with pytest.raises(KeyUnavailableError, match="closed"):
        await provider.sign(key.ref, DATA)
    assert kms.describe_key(KeyId=key.ref)["KeyMetadata"]["KeyId"] == key.ref  # still usable


async def test_the_client_is_made_on_first_use() -> None:
    """Construction makes no client (and reads no credentials): a bad region shows on use."""
    with kms_environment():
        provider = AwsKmsProvider(region="not a region!")
        with pytest.raises(KeyUnavailableError, match="InvalidRegionError"):
            await provider.create_key()
        await provider.close()


def test_a_missing_boto3_is_named_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dragoman.keys.aws_kms.find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"boto3 is not installed"):
        AwsKmsProvider(region=REGION)


@pytest.mark.parametrize(
    "settings",
    [
        {"alias": "dragoman-signing"},
        {"alias": "alias/aws/dragoman"},
        {"alias": "alias/with space"},
        {"tag_key": ""},
        {"max_attempts": 0},
        {"timeout": 0},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="aws-kms"):
        AwsKmsProvider(region=REGION, **settings)


def test_kms_timeout_and_attempts_come_from_settings() -> None:
    from dragoman.keys.factory import open_provider
    from dragoman.settings import KeySettings

    settings = KeySettings(
        provider="aws-kms",
        aws_kms={"region": REGION, "timeout": "750ms", "attempts": 1},  # type: ignore[arg-type]
    )
    with kms_environment():
        provider = open_provider(settings, engine=None, query_timeout=1.0)  # type: ignore[arg-type]
    assert isinstance(provider, AwsKmsProvider)
    assert (provider._timeout, provider._max_attempts) == (0.75, 1)
