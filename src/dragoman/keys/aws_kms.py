"""The ``aws-kms`` key provider: ES256 keys that live in AWS KMS and never leave it.

Keys are ``ECC_NIST_P256`` / ``SIGN_VERIFY`` customer managed keys, tagged
``<tag_key>=signing`` so the provider can find its own keys again; the provider's ``ref`` for
a key is its KMS key id. KMS does not rotate asymmetric keys: rotation is a new key
(:meth:`AwsKmsProvider.create_key`), JWKS publication (done by the key ring from the public
JWK) and, once the key is current, moving an alias to it (:meth:`AwsKmsProvider.mark_current`)
so operators can see and audit which key signs.

Signing: ``MessageType=DIGEST``, not ``RAW``
---------------------------------------------
KMS ``Sign`` with ``MessageType=RAW`` hashes the message itself but accepts at most 4096
bytes. The provider contract is "ES256 of ``data``" for data of any length, so the provider
computes SHA-256 locally and calls ``Sign(MessageType=DIGEST, SigningAlgorithm=ECDSA_SHA_256)``
with the 32-byte digest, which KMS signs as it is (no second hash). The signature is the same
ES256 signature RAW would give for short data, there is one code path for every length, and
only a hash of the token's signing input (claims name customers and principals) is sent to
KMS. A key policy may pin this with the ``kms:MessageType`` condition key. Allowing DIGEST
gives a caller no more power than RAW: either way a caller with ``kms:Sign`` signs whatever
it likes.

The DER signature KMS returns is converted to the 64-byte ``r || s`` of JWS by the strict
parser of :mod:`dragoman.keys.ecdsa`, then verified locally against the key's public key
(fetched once per key with ``GetPublicKey`` and kept; it is public). A malformed, misrouted
or wrongly hashed signature therefore never leaves the provider.

Failures
--------
boto3 is synchronous: every call runs in a worker thread (:func:`asyncio.to_thread`). The
client is made on first use, with the normal boto3 credential chain (environment, shared
files, instance role), bounded timeouts and the ``standard`` retry mode, which retries
throttling and connection errors a few times. Any botocore error that remains (throttled,
key disabled or pending deletion, unknown key, access denied, endpoint down) raises
:class:`KeyUnavailableError` naming the operation and the AWS error code only: no
credentials, no request or response bodies. Nothing private is ever cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from dragoman.keys.ecdsa import der_to_raw, raw_to_der
from dragoman.keys.jwk import ec_public_jwk
from dragoman.keys.provider import KeyUnavailableError, ProviderKey

log = logging.getLogger(__name__)

T = TypeVar("T")

TAG_VALUE = "signing"
KEY_SPEC = "ECC_NIST_P256"
SIGNING_ALGORITHM = "ECDSA_SHA_256"
MESSAGE_TYPE = "DIGEST"

_KEY_ID = re.compile(
    r"(?:mrk-[0-9a-f]{32}"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
    re.IGNORECASE,
)
_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/(.+)")
_ALIAS = re.compile(r"alias/[a-zA-Z0-9/_-]{1,250}")
_DISABLED_STATES = frozenset({"Disabled", "PendingDeletion", "PendingReplicaDeletion"})
_NOT_OURS = frozenset({"AccessDeniedException", "NotFoundException"})


class _ServiceError(KeyUnavailableError):
    """A failed KMS call, with the AWS error code (or the botocore error's class name)."""

    def __init__(self, operation: str, code: str) -> None:
        super().__init__(f"aws-kms: {operation} failed ({code})")
        self.code = code


class AwsKmsProvider:
    """ES256 signing keys held in AWS KMS (or a KMS-compatible endpoint)."""

    name = "aws-kms"

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        alias: str = "alias/dragoman-signing",
        tag_key: str = "dragoman",
        client: Any = None,
        max_attempts: int = 3,
        timeout: float = 5.0,
    ) -> None:
        if not _ALIAS.fullmatch(alias) or alias.startswith("alias/aws/"):
            raise ValueError(f"aws-kms: {alias!r} is not a usable KMS alias name")
        if not 1 <= len(tag_key) <= 128:
            raise ValueError("aws-kms: the tag key must have 1 to 128 characters")
        if max_attempts < 1 or timeout <= 0:
            raise ValueError("aws-kms: max_attempts and timeout must be positive")
        if find_spec("boto3") is None:
            raise RuntimeError("aws-kms: boto3 is not installed (install dragoman[aws])")
        self._region = region
        self._endpoint_url = endpoint_url
        self._alias = alias
        self._tag_key = tag_key
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._client_instance: Any = client
        self._owns_client = client is None
        self._closed = False
        self._lock = threading.Lock()
        self._public_keys: dict[str, ec.EllipticCurvePublicKey] = {}

    @property
    def alias(self) -> str:
        return self._alias

    # The protocol: each method runs its blocking boto3 calls in a worker thread.

    async def create_key(self) -> ProviderKey:
        return await asyncio.to_thread(self._create_key)

    async def sign(self, ref: str, data: bytes) -> bytes:
        return await asyncio.to_thread(self._sign, ref, bytes(data))

    async def public_jwk(self, ref: str) -> dict[str, Any]:
        key = await asyncio.to_thread(self._public_key, _checked_ref(ref))
        return ec_public_jwk(key)

    async def list_keys(self) -> list[str]:
        return await asyncio.to_thread(self._list_keys)

    async def disable(self, ref: str) -> None:
        await asyncio.to_thread(self._disable, ref)

    async def mark_current(self, ref: str) -> None:
        await asyncio.to_thread(self._mark_current, ref)

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client_instance = self._client_instance, None
        if client is not None and self._owns_client:
            await asyncio.to_thread(client.close)

    # The blocking work.

    def _create_key(self) -> ProviderKey:
        response = self._call(
            "create_key",
            KeySpec=KEY_SPEC,
            KeyUsage="SIGN_VERIFY",
            Description="dragoman ES256 token signing key",
            Tags=[{"TagKey": self._tag_key, "TagValue": TAG_VALUE}],
        )
        key_id = _field("create_key", lambda: str(response["KeyMetadata"]["KeyId"]))
        log.info("aws-kms: created signing key %s", key_id)
        return ProviderKey(ref=key_id, public_jwk=ec_public_jwk(self._public_key(key_id)))

    def _sign(self, ref: str, data: bytes) -> bytes:
        ref = _checked_ref(ref)
        public_key = self._public_key(ref)
        digest = hashlib.sha256(data).digest()
        response = self._call(
            "sign",
            KeyId=ref,
            Message=digest,
            MessageType=MESSAGE_TYPE,
            SigningAlgorithm=SIGNING_ALGORITHM,
        )
        algorithm = response.get("SigningAlgorithm", SIGNING_ALGORITHM)
        if algorithm != SIGNING_ALGORITHM:
            raise KeyUnavailableError(f"aws-kms: sign answered with {algorithm!s:.40}")
        der = _field("sign", lambda: bytes(response["Signature"]))
        try:
            raw = der_to_raw(der)
        except ValueError as exc:
            raise KeyUnavailableError(f"aws-kms: sign returned malformed DER ({exc})") from None
        try:
            public_key.verify(raw_to_der(raw), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature:
            raise KeyUnavailableError(
                f"aws-kms: the signature of key {ref} does not verify under its public key"
            ) from None
        return raw

    def _public_key(self, ref: str) -> ec.EllipticCurvePublicKey:
        cached = self._public_keys.get(ref)
        if cached is not None:
            return cached
        response = self._call("get_public_key", KeyId=ref)
        if response.get("KeyUsage") != "SIGN_VERIFY":
            raise KeyUnavailableError(f"aws-kms: key {ref} is not a SIGN_VERIFY key")
        der = _field("get_public_key", lambda: bytes(response["PublicKey"]))
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyUnavailableError(f"aws-kms: the public key of {ref} is unreadable") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise KeyUnavailableError(f"aws-kms: key {ref} is not an ECC_NIST_P256 key")
        self._public_keys[ref] = key
        return key

    def _list_keys(self) -> list[str]:
        refs: list[str] = []
        for page in self._pages("list_keys"):
            for entry in page.get("Keys", []):
                key_id = entry.get("KeyId")
                if isinstance(key_id, str) and self._is_ours(key_id):
                    refs.append(key_id)
        return refs

    def _is_ours(self, key_id: str) -> bool:
        try:
            for page in self._pages("list_resource_tags", KeyId=key_id):
                for tag in page.get("Tags", []):
                    if tag.get("TagKey") == self._tag_key and tag.get("TagValue") == TAG_VALUE:
                        return True
        except _ServiceError as exc:
            if exc.code in _NOT_OURS:  # someone else's key, or deleted meanwhile
                return False
            raise
        return False

    def _disable(self, ref: str) -> None:
        ref = _checked_ref(ref)
        try:
            self._call("disable_key", KeyId=ref)
        except _ServiceError as exc:
            if exc.code != "KMSInvalidStateException":
                raise
            response = self._call("describe_key", KeyId=ref)
            state = _field("describe_key", lambda: str(response["KeyMetadata"]["KeyState"]))
            if state not in _DISABLED_STATES:
                raise
        log.info("aws-kms: disabled signing key %s", ref)

    def _mark_current(self, ref: str) -> None:
        ref = _checked_ref(ref)
        try:
            self._call("update_alias", AliasName=self._alias, TargetKeyId=ref)
        except _ServiceError as exc:
            if exc.code != "NotFoundException":
                raise
            try:
                self._call("create_alias", AliasName=self._alias, TargetKeyId=ref)
            except _ServiceError as again:
                if again.code != "AlreadyExistsException":
                    raise
                # Another instance made the alias meanwhile.
                self._call("update_alias", AliasName=self._alias, TargetKeyId=ref)
        log.info("aws-kms: %s now names signing key %s", self._alias, ref)

    # boto3 plumbing.

    def _client(self) -> Any:
        with self._lock:
            if self._closed:
                raise KeyUnavailableError("aws-kms: the provider is closed")
            if self._client_instance is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=self._timeout,
                    read_timeout=self._timeout,
                    retries={"mode": "standard", "total_max_attempts": self._max_attempts},
                )
                self._client_instance = boto3.session.Session().client(
                    "kms",
                    region_name=self._region,
                    endpoint_url=self._endpoint_url,
                    config=config,
                )
            return self._client_instance

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            response: dict[str, Any] = getattr(self._client(), operation)(**params)
            return response

        return _mapped(operation, call)

    def _pages(self, operation: str, **params: Any) -> Iterator[dict[str, Any]]:
        pages = _mapped(
            operation, lambda: iter(self._client().get_paginator(operation).paginate(**params))
        )
        while True:
            page = _mapped(operation, lambda: next(pages, None))
            if page is None:
                return
            yield page


def _mapped(operation: str, call: Callable[[], T]) -> T:
    """Run a botocore call; any botocore error becomes a secret-free KeyUnavailableError."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(error.get("Code") or "ClientError")[:64]
        log.debug("aws-kms: %s failed: %s", operation, code)
        raise _ServiceError(operation, code) from None
    except BotoCoreError as exc:
        log.debug("aws-kms: %s failed: %s", operation, type(exc).__name__)
        raise _ServiceError(operation, type(exc).__name__) from None


def _field(operation: str, read: Callable[[], T]) -> T:
    """A member of a KMS response; a response without it is a provider failure."""
    try:
        return read()
    except (KeyError, TypeError, ValueError):
        raise KeyUnavailableError(f"aws-kms: {operation} returned an incomplete answer") from None


def _checked_ref(ref: str) -> str:
    """A key id or key ARN; aliases are refused (a ref must name one key, for good)."""
    arn = _KEY_ARN.fullmatch(ref)
    if _KEY_ID.fullmatch(ref) or (arn and _KEY_ID.fullmatch(arn.group(1))):
        return ref
    raise KeyUnavailableError(f"aws-kms: {ref[:80]!r} is not a KMS key id")
