"""The aws_kms provider for the contract suite: moto's KMS in server mode on 127.0.0.1.

Each test gets its own moto server (a real HTTP endpoint on a free loopback port, spoken to by
boto3 over the network) and its own tag key, so ``list_keys`` sees only that test's keys.
Credentials are fake and come from the environment, as in production (the boto3 chain);
shared config files and the instance metadata service are switched off so a developer's own
AWS setup is never read.

moto 5.2.5 departs from the KMS ``Sign`` API in three ways that matter here (its responses
parse ``MessageType`` and ignore it; see getmoto/moto#10202): a ``DIGEST`` is hashed a second
time, a disabled key still signs, and a ``RAW`` message longer than 4096 bytes is accepted.
:func:`faithful_sign` replaces moto's ``Sign`` handler for the server's lifetime with the
documented behaviour (API_Sign): DIGEST is signed as it is and must be as long as the
algorithm's hash, RAW is at most 4096 bytes, a disabled key answers ``DisabledException`` and
a key in another non-enabled state ``KMSInvalidStateException``. Everything else is moto's.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from moto.core.exceptions import JsonRESTError
from moto.kms.exceptions import ValidationException
from moto.kms.responses import KmsResponse
from moto.kms.utils import ECDSAPrivateKey
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from dragoman.keys.aws_kms import AwsKmsProvider
from dragoman.keys.provider import KeyProvider

from .harness import ProviderHarness

REGION = "us-east-1"
FAKE_SECRET = "fake-secret-for-tests-7b1e0c9a"
"""The secret access key the tests run with: it must never appear in an error or a log."""

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
)

RAW_LIMIT = 4096
_DIGESTS: dict[str, hashes.HashAlgorithm] = {
    "ECDSA_SHA_256": hashes.SHA256(),
    "ECDSA_SHA_384": hashes.SHA384(),
    "ECDSA_SHA_512": hashes.SHA512(),
}
_moto_sign = KmsResponse.sign


class _KmsError(JsonRESTError):
    code = 400

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(error_type, message)


def faithful_sign(self: KmsResponse) -> str:
    """KMS ``Sign`` as documented, for the ECDSA keys dragoman uses."""
    key_id = self._get_param("KeyId")
    message = self._get_param("Message")
    message_type = self._get_param("MessageType") or "RAW"
    algorithm = self._get_param("SigningAlgorithm")
    self._validate_key_id(key_id)
    key = self.kms_backend.describe_key(key_id)
    if key.key_state == "Disabled":
        raise _KmsError("DisabledException", f"{key.arn} is disabled.")
    if key.key_state != "Enabled":
        raise _KmsError("KMSInvalidStateException", f"{key.arn} is {key.key_state}.")
    if isinstance(message, str):
        message = message.encode("utf-8")
    if message_type == "RAW":
        if len(message) > RAW_LIMIT:
            raise ValidationException(
                "1 validation error detected: Value at 'message' failed to satisfy "
                f"constraint: Member must have length less than or equal to {RAW_LIMIT}"
            )
        return str(_moto_sign(self))
    if message_type != "DIGEST":
        raise ValidationException(
            f"1 validation error detected: Value '{message_type}' at 'messageType' failed "
            "to satisfy constraint: Member must satisfy enum value set: [RAW, DIGEST]"
        )
    if algorithm not in key.signing_algorithms or not isinstance(key.private_key, ECDSAPrivateKey):
        raise ValidationException(f"{algorithm} is not supported for this key (test server)")
    digest = _DIGESTS[algorithm]
    if len(message) != digest.digest_size:
        raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
    signature = key.private_key.private_key.sign(message, ec.ECDSA(Prehashed(digest)))
    return json.dumps(
        {
            "KeyId": key.arn,
            "Signature": base64.b64encode(signature).decode("ascii"),
            "SigningAlgorithm": algorithm,
        }
    )


class _QuickMotoServer(ThreadedMotoServer):
    """moto's threaded server, polling for shutdown every 20 ms instead of 500 ms."""

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.02)


@contextmanager
def kms_environment() -> Iterator[pytest.MonkeyPatch]:
    """Fake credentials in the environment, nothing read from the developer's AWS setup."""
    with pytest.MonkeyPatch.context() as patch:
        for name in UNSET_ENV:
            patch.delenv(name, raising=False)
        for name, value in FAKE_ENV.items():
            patch.setenv(name, value)
        yield patch


@contextmanager
def kms_server() -> Iterator[str]:
    """A KMS-compatible endpoint on 127.0.0.1 (moto, with a faithful Sign): its URL."""
    with kms_environment() as patch:
        patch.setattr(KmsResponse, "sign", faithful_sign)
        server = _QuickMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def aws_kms_provider() -> AsyncIterator[ProviderHarness]:
    with kms_server() as endpoint_url:
        tag_key = unique_name("dragoman-test")
        alias = f"alias/{unique_name('dragoman-test')}"
        opened: list[AwsKmsProvider] = []

        def make() -> AwsKmsProvider:
            provider = AwsKmsProvider(
                region=REGION, endpoint_url=endpoint_url, alias=alias, tag_key=tag_key
            )
            opened.append(provider)
            return provider

        async def reopen() -> KeyProvider:
            return make()

        yield ProviderHarness(make(), reopen)
        for provider in opened:
            await provider.close()
