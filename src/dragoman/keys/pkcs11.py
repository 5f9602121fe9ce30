"""The PKCS#11 key provider: ES256 keys generated inside a token, which signs; nothing leaves it.

Keys are EC P-256 key pairs made by the token itself (``C_GenerateKeyPair``), stored on it
(CKA_TOKEN), private, sensitive and non-extractable, with a random CKA_ID and the CKA_LABEL
``label_prefix + id.hex()``; that label is the key's ``ref``. The token confirms after
generation that the private key is ALWAYS_SENSITIVE and NEVER_EXTRACTABLE, or the key is
destroyed and refused. This module never asks for a private key's value (CKA_VALUE) and has no
way to export one: signing is a call into the token.

ES256 with modules that lack CKM_ECDSA_SHA256 (SoftHSM 2.6): SHA-256 is computed here and the
token signs the digest with CKM_ECDSA, which returns the 64-byte ``r || s`` of JWS. The private
key is found by its label, so every signature is verified here against the key's public key
(read once per ref, and kept) before it is used; one that does not verify is refused.

Disabling a key **destroys its private key object** (the public key object stays, so the key
is still listed and its public JWK can still be read). Clearing CKA_SIGN instead would not be
for good: PKCS#11 lets anyone logged in set it back to true (SoftHSM does). Only when the token
refuses the destruction (CKA_DESTROYABLE false, a token policy) does ``disable`` fall back to
clearing CKA_SIGN, and says so in the log.

Threading. python-pkcs11 is synchronous and initialises the module with ``C_Initialize(NULL)``,
which promises the module that no two threads call it at once. So every call into a module runs
in a worker thread (``asyncio.to_thread``; the event loop never waits on the token) under one
process-wide lock per module, and each provider also queues its own calls on an asyncio lock so
that waiting calls do not each hold a worker thread.

Sessions and login. Each provider opens one read/write session, lazily, and closes it in
``close``. A PKCS#11 login belongs to the whole process, not to a session (``C_Login`` on a
second session answers CKR_USER_ALREADY_LOGGED_IN without looking at the PIN; ``C_Logout``
logs every session out), so the login is held by a read-only session shared by the providers
of one token in this process and closed with the last of them. A provider whose PIN differs
from the one that logged in is refused. A PIN the token rejects is not tried again by the same
provider (tokens lock the PIN after a few failures); that needs a new provider (a restart with
the corrected setting). A session lost under a provider (library re-initialised, token
removed and re-inserted) is reopened once per call. A closed provider stays closed. Messages
never contain the PIN.

Each provider keeps the handles of the private keys it signed with (session objects, dropped
with the session); when the token says a handle is gone (the key was disabled by another
instance) the key is looked up again, and found disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, SignMixin
from pkcs11.exceptions import (
    DeviceRemoved,
    KeyHandleInvalid,
    MultipleTokensReturned,
    NoSuchToken,
    ObjectHandleInvalid,
    PinExpired,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    SessionClosed,
    SessionHandleInvalid,
    TokenNotPresent,
    TokenNotRecognised,
    UserAlreadyLoggedIn,
    UserNotLoggedIn,
    UserPinNotInitialized,
)
from pkcs11.types import Object, Session, Token

from dragoman.keys.jwk import ec_public_jwk
from dragoman.keys.provider import KeyUnavailableError, ProviderKey

log = logging.getLogger(__name__)

T = TypeVar("T")

P256_PARAMETERS = bytes.fromhex("06082a8648ce3d030107")
"""CKA_EC_PARAMS of P-256: the DER OBJECT IDENTIFIER 1.2.840.10045.3.1.7 (prime256v1)."""

SIGNATURE_LENGTH = 64
"""ES256: r and s of 32 bytes each."""

_KEY_ID_BYTES = 16
_SIGNER_CACHE = 64

_PIN_REFUSED = (PinIncorrect, PinInvalid, PinLenRange, PinLocked, PinExpired, UserPinNotInitialized)
_SESSION_LOST = (
    SessionHandleInvalid,
    SessionClosed,
    DeviceRemoved,
    TokenNotPresent,
    TokenNotRecognised,
    UserNotLoggedIn,
)
_HANDLE_STALE = (ObjectHandleInvalid, KeyHandleInvalid)


def _describe(exc: BaseException) -> str:
    """The PKCS#11 error's name (python-pkcs11's texts name only codes and attributes)."""
    if type(exc) is PKCS11Error and str(exc):
        return str(exc)  # an unmapped return code: "Unmapped error code 0x68"
    return type(exc).__name__


def _session_lost(exc: PKCS11Error) -> bool:
    if isinstance(exc, _SESSION_LOST):
        return True
    # CKR_CRYPTOKI_NOT_INITIALIZED (the module was finalised) has no class of its own.
    return type(exc) is PKCS11Error and "not initialized" in str(exc)


def ec_point(value: bytes) -> bytes:
    """The X9.62 point of a CKA_EC_POINT value.

    PKCS#11 stores the point DER-encoded as an OCTET STRING (tag 0x04, one length byte for
    P-256); some older tokens return the bare point. The two are told apart by length alone: a
    P-256 point is 65 bytes (uncompressed) or 33 (compressed), its DER wrapping two more.
    """
    if len(value) - 2 in (33, 65) and value[0] == 0x04 and value[1] == len(value) - 2:
        return value[2:]
    if len(value) in (33, 65):
        return value
    raise ValueError("CKA_EC_POINT is not a P-256 point")


def public_key_of(parameters: bytes, point: bytes) -> ec.EllipticCurvePublicKey:
    """The public key from CKA_EC_PARAMS and CKA_EC_POINT (P-256 only; the point is checked)."""
    if parameters != P256_PARAMETERS:
        raise ValueError("not a P-256 key")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ec_point(point))


@dataclass(eq=False)
class _Login:
    """The session holding this process's login to one token, shared by its providers."""

    session: Session
    pin_digest: bytes
    holders: int = 0
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _quietly(self.session.close)  # C_Logout, then C_CloseSession


class _Module:
    """One PKCS#11 module in this process: the lock every call into it takes, and its logins."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logins: dict[bytes, _Login] = {}  # by token serial number


_MODULES: dict[str, _Module] = {}
_MODULES_LOCK = threading.Lock()


def module_lock(module_path: str) -> threading.Lock:
    """The lock serialising every call into the module at ``module_path`` in this process."""
    return _module(module_path).lock


def _module(module_path: str) -> _Module:
    with _MODULES_LOCK:
        return _MODULES.setdefault(module_path, _Module())


def _quietly(close: Callable[[], None]) -> None:
    # Already gone (library re-initialised, token removed): nothing left to release.
    with contextlib.suppress(PKCS11Error):
        close()


class Pkcs11Provider:
    """ES256 keys in a PKCS#11 token (see the module docstring for the guarantees)."""

    name = "pkcs11"

    def __init__(
        self, module_path: str, token_label: str, pin: str, *, label_prefix: str = "dragoman-"
    ) -> None:
        if not label_prefix:
            raise ValueError("label_prefix must not be empty: it tells dragoman's keys apart")
        self._module_path = module_path
        self._token_label = token_label
        self._pin = pin
        self._prefix = label_prefix
        self._module = _module(module_path)
        self._queue = asyncio.Lock()
        self._session: Session | None = None
        self._login: _Login | None = None
        self._serial = b""
        self._signers: dict[str, SignMixin] = {}
        self._public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._refused: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Pkcs11Provider(module={self._module_path!r}, token={self._token_label!r})"

    # The protocol: each call checks what it can without the token, then runs in a worker.

    async def create_key(self) -> ProviderKey:
        return await self._call("create_key", self._create)

    async def sign(self, ref: str, data: bytes) -> bytes:
        self._check_ref(ref)
        return await self._call("sign", lambda session: self._sign(session, ref, data))

    async def public_jwk(self, ref: str) -> dict[str, Any]:
        self._check_ref(ref)
        return await self._call("public_jwk", lambda session: self._public_jwk(session, ref))

    async def list_keys(self) -> list[str]:
        return await self._call("list_keys", self._list)

    async def disable(self, ref: str) -> None:
        self._check_ref(ref)
        await self._call("disable", lambda session: self._disable(session, ref))

    async def mark_current(self, ref: str) -> None:
        """Nothing to do: the key set names keys by label, and the token has no alias."""

    async def close(self) -> None:
        """Close this provider's session (and the login, with the token's last provider)."""
        async with self._queue:
            await asyncio.to_thread(self._close)

    # Worker-thread side: every method below runs under the module lock.

    def _check_ref(self, ref: str) -> None:
        if not ref.startswith(self._prefix) or ref == self._prefix:
            raise KeyUnavailableError(f"pkcs11: unknown key {ref!r}")

    async def _call(self, what: str, operation: Callable[[Session], T]) -> T:
        async with self._queue:
            return await asyncio.to_thread(self._run, what, operation)

    def _run(self, what: str, operation: Callable[[Session], T]) -> T:
        with self._module.lock:
            for attempt in range(2):
                try:
                    return operation(self._open())
                except KeyUnavailableError:
                    raise
                except PKCS11Error as exc:
                    if not _session_lost(exc):
                        raise KeyUnavailableError(
                            f"pkcs11: {what} failed ({_describe(exc)})"
                        ) from None
                    log.info("pkcs11: session lost during %s (%s)", what, _describe(exc))
                    self._drop(lost=True)
                    if attempt:
                        raise KeyUnavailableError(
                            f"pkcs11: {what} failed, the token session was lost ({_describe(exc)})"
                        ) from None
            raise AssertionError("unreachable")

    def _open(self) -> Session:
        if self._closed:
            raise KeyUnavailableError("pkcs11: the provider is closed")
        if self._session is not None and self._login is not None and not self._login.closed:
            return self._session
        if self._session is not None:
            self._drop(lost=False)  # another provider found the shared login lost: log in again
        if self._refused is not None:
            raise KeyUnavailableError(self._refused)
        try:
            token = pkcs11.lib(self._module_path).get_token(token_label=self._token_label)
        except NoSuchToken:
            raise KeyUnavailableError(
                f"pkcs11: no token labelled {self._token_label!r} in {self._module_path}"
            ) from None
        except MultipleTokensReturned:
            raise KeyUnavailableError(
                f"pkcs11: several tokens are labelled {self._token_label!r}"
            ) from None
        except PKCS11Error as exc:
            if _session_lost(exc):
                raise
            raise KeyUnavailableError(
                f"pkcs11: cannot use the module {self._module_path} ({_describe(exc)})"
            ) from None
        self._serial = token.serial
        login = self._login_to(token)
        login.holders += 1
        self._login = login
        try:
            self._session = token.open(rw=True)
        except BaseException:
            self._drop(lost=False)
            raise
        return self._session

    def _login_to(self, token: Token) -> _Login:
        digest = hashlib.sha256(self._pin.encode("utf-8")).digest()
        login = self._module.logins.get(self._serial)
        if login is not None:
            if not hmac.compare_digest(login.pin_digest, digest):
                self._refused = (
                    f"pkcs11: the PIN for token {self._token_label!r} differs from the one this "
                    "process logged in with; not trying again"
                )
                raise KeyUnavailableError(self._refused)
            return login
        try:
            # python-pkcs11 opens a session and calls C_Login on it (a failed login leaves that
            # session open, un-authenticated: one per refused provider, since it never retries).
            session = token.open(user_pin=self._pin)
        except _PIN_REFUSED as exc:
            self._refused = (
                f"pkcs11: token {self._token_label!r} refused the PIN ({type(exc).__name__}); "
                "not trying again until the provider is made anew"
            )
            raise KeyUnavailableError(self._refused) from None
        except UserAlreadyLoggedIn:
            raise KeyUnavailableError(
                f"pkcs11: token {self._token_label!r} is already logged in by other code in "
                "this process, so the PIN cannot be checked"
            ) from None
        login = _Login(session, digest)
        self._module.logins[self._serial] = login
        return login

    def _drop(self, *, lost: bool) -> None:
        """Release this provider's session and its hold on the login.

        ``lost``: the token no longer knows our session, so the shared login is presumed gone
        too; it is closed and forgotten, and the other providers log in anew on their next call.
        """
        self._signers.clear()
        session, self._session = self._session, None
        if session is not None:
            _quietly(session.close)  # logged in as nobody: C_CloseSession only
        login, self._login = self._login, None
        if login is None:
            return
        login.holders -= 1
        if lost or login.holders <= 0:
            if self._module.logins.get(self._serial) is login:
                del self._module.logins[self._serial]
            login.close()

    def _close(self) -> None:
        with self._module.lock:
            self._closed = True
            self._drop(lost=False)

    # Token operations.

    def _objects(self, session: Session, object_class: ObjectClass, ref: str) -> list[Object]:
        return list(
            session.get_objects(
                {
                    Attribute.CLASS: object_class,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.LABEL: ref,
                }
            )
        )

    def _create(self, session: Session) -> ProviderKey:
        key_id = secrets.token_bytes(_KEY_ID_BYTES)
        ref = self._prefix + key_id.hex()
        public, private = session.generate_keypair(
            KeyType.EC,
            id=key_id,
            label=ref,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={
                Attribute.EC_PARAMS: P256_PARAMETERS,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.VERIFY: True,
            },
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.SIGN_RECOVER: False,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            },
        )
        try:
            # What the token made, not what was asked: a key that ever was extractable or
            # readable, or that is not stored, is no key of ours.
            promised = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.ALWAYS_SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.NEVER_EXTRACTABLE: True,
                Attribute.SIGN: True,
            }
            broken = [a.name for a, v in promised.items() if private[a] is not v]
            if broken:
                raise KeyUnavailableError(
                    "pkcs11: the token did not make the key as asked (" + ", ".join(broken) + ")"
                )
            key = self._public_of(public)
        except BaseException:
            _quietly(private.destroy)
            _quietly(public.destroy)
            raise
        self._public_keys[ref] = key
        return ProviderKey(ref=ref, public_jwk=ec_public_jwk(key))

    def _sign(self, session: Session, ref: str, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        signer = self._signers.get(ref)
        if signer is None:
            signer = self._signer(session, ref)
        try:
            signature = signer.sign(digest, mechanism=Mechanism.ECDSA)
        except _HANDLE_STALE:
            # The object went away since we found it (disabled by another instance, say).
            self._signers.pop(ref, None)
            signature = self._signer(session, ref).sign(digest, mechanism=Mechanism.ECDSA)
        except PKCS11Error:
            self._signers.pop(ref, None)  # CKR_KEY_FUNCTION_NOT_PERMITTED and the like
            raise
        if len(signature) != SIGNATURE_LENGTH:
            raise KeyUnavailableError(
                f"pkcs11: key {ref} gave a {len(signature)}-byte signature, not ES256's 64"
            )
        # The private object is found by its label, which anyone logged in to the token can
        # give another key: what it signed must verify under the key's public key.
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self._public_key(session, ref).verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature:
            self._signers.pop(ref, None)
            raise KeyUnavailableError(
                f"pkcs11: the signature of key {ref} does not verify under its public key"
            ) from None
        return signature

    def _public_key(self, session: Session, ref: str) -> ec.EllipticCurvePublicKey:
        """The public key of ``ref``, read from the token once (when the key was made here,
        or at its first signature here) and kept (for the last 64 keys read): a public
        object put under the label later does not replace it."""
        cached = self._public_keys.get(ref)
        if cached is not None:
            return cached
        key = self._public_of(self._public_object(session, ref))
        if len(self._public_keys) >= _SIGNER_CACHE:
            self._public_keys.clear()
        self._public_keys[ref] = key
        return key

    def _signer(self, session: Session, ref: str) -> SignMixin:
        found = self._objects(session, ObjectClass.PRIVATE_KEY, ref)
        if not found:
            if self._objects(session, ObjectClass.PUBLIC_KEY, ref):
                raise KeyUnavailableError(f"pkcs11: key {ref} is disabled")
            raise KeyUnavailableError(f"pkcs11: unknown key {ref!r}")
        if len(found) > 1:
            raise KeyUnavailableError(f"pkcs11: several private keys are labelled {ref!r}")
        key = found[0]
        if not isinstance(key, SignMixin):  # CKA_SIGN is false
            raise KeyUnavailableError(f"pkcs11: key {ref} is disabled (it may not sign)")
        if len(self._signers) >= _SIGNER_CACHE:
            self._signers.clear()
        self._signers[ref] = key
        return key

    def _public_object(self, session: Session, ref: str) -> Object:
        found = self._objects(session, ObjectClass.PUBLIC_KEY, ref)
        if len(found) != 1:
            if found:
                raise KeyUnavailableError(f"pkcs11: several public keys are labelled {ref!r}")
            raise KeyUnavailableError(f"pkcs11: unknown key {ref!r}")
        return found[0]

    def _public_jwk(self, session: Session, ref: str) -> dict[str, Any]:
        return self._jwk_of(self._public_object(session, ref))

    def _public_of(self, public: Object) -> ec.EllipticCurvePublicKey:
        try:
            return public_key_of(
                bytes(public[Attribute.EC_PARAMS]), bytes(public[Attribute.EC_POINT])
            )
        except ValueError as exc:
            raise KeyUnavailableError(f"pkcs11: unusable public key ({exc})") from None

    def _jwk_of(self, public: Object) -> dict[str, Any]:
        return ec_public_jwk(self._public_of(public))

    def _list(self, session: Session) -> list[str]:
        refs: set[str] = set()
        for object_class in (ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY):
            for found in session.get_objects(
                {Attribute.CLASS: object_class, Attribute.KEY_TYPE: KeyType.EC}
            ):
                label = found[Attribute.LABEL]
                if isinstance(label, str) and label.startswith(self._prefix):
                    refs.add(label)
        return sorted(refs)

    def _disable(self, session: Session, ref: str) -> None:
        self._signers.pop(ref, None)
        found = self._objects(session, ObjectClass.PRIVATE_KEY, ref)
        if not found:
            if self._objects(session, ObjectClass.PUBLIC_KEY, ref):
                return  # disabled already
            raise KeyUnavailableError(f"pkcs11: unknown key {ref!r}")
        for private in found:
            try:
                private.destroy()
            except PKCS11Error as exc:
                # The token will not destroy it: take away its right to sign instead, which
                # anyone logged in to the token could give back.
                private[Attribute.SIGN] = False
                log.warning(
                    "pkcs11: the token refused to destroy key %s (%s); CKA_SIGN is now false",
                    ref,
                    _describe(exc),
                )
