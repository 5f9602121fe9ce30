"""TLS termination in dragoman: a listener's SSL context, from ``server.tls`` (the proxy) or
``decision.tls`` (the decision listener).

Python's ssl module cannot accept a client certificate first and judge it later: a client
certificate that does not chain to ``client_ca_file``, or is outside its validity window,
fails the handshake. Everything about the certificate beyond that (its SPIFFE ID, its subject,
whether it is a leaf, its validity at each request) is judged by :mod:`dragoman.identity.mtls`.

Certificates are renewed while the listener runs (cert-manager, ACME, a mounted secret):
:class:`ServerTls` reads the files again when they change. A listening socket keeps the SSL
context it was made with, so that context only carries a callback, run at each ClientHello
(with or without SNI), that hands the handshake to the context built from the files last
read. A context is never changed in place: a certificate loaded beside the old key would
break every handshake until the key followed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from dragoman.settings.server import TlsSettings

log = logging.getLogger(__name__)

FileStamp = tuple[int, int, int, int] | None
"""What says a file changed: device, inode, size, modification time (None: missing)."""


def _refuse_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal for the passphrase of an
    # encrypted key, and a worker would hang there.
    raise ValueError("the private key is encrypted; give dragoman an unencrypted key file")


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SSL context of the listener: TLS 1.2 at least, the configured certificate, and
    client certificates verified against ``client_ca_file`` when it is set."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(
        certfile=tls.cert_file, keyfile=tls.key_file, password=_refuse_passphrase
    )
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.client_auth == "required" else ssl.CERT_OPTIONAL
        )
        # A resumed session skips the client certificate's verification: a ticket would
        # let a certificate in for hours after its CA left the bundle (or after it
        # expired). Without tickets only TLS 1.2's session cache resumes (five minutes),
        # and ServerTls refuses its sessions from before a change of the bundle.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


class CertificateNotValidNow(ValueError):
    """The certificate loads with its key, but its validity does not cover now: served, it
    would fail every handshake (expired, or not valid yet)."""

    def __init__(self, cert_file: Path, why: str, *, valid_from: float | None = None) -> None:
        super().__init__(f"the certificate in {cert_file} {why}")
        self.valid_from = valid_from
        """When a certificate not valid yet becomes valid (None: expired)."""


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_validity(cert: x509.Certificate, cert_file: Path) -> None:
    """Raise CertificateNotValidNow unless the leaf ``cert`` is valid now."""
    now = datetime.now(UTC)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        raise CertificateNotValidNow(
            cert_file,
            f"is not valid yet (valid from {_utc(not_before)})",
            valid_from=not_before.timestamp(),
        )
    if now > not_after:
        raise CertificateNotValidNow(cert_file, f"has expired (valid until {_utc(not_after)})")


def _stamp(path: Path) -> FileStamp:
    try:
        found = os.stat(path)  # follows symlinks: a mounted secret swaps a link to a new file
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


class ServerTls:
    """A listener's TLS, following its files: :attr:`context` goes to the listening socket
    once; :meth:`reload` (or :meth:`watch`, every ``tls.reload_interval``) reads the files
    again when they changed. New handshakes get the new certificate; connections already
    open keep theirs. Files that do not load (half written, a key that does not match, an
    encrypted key) leave the listener serving what it served, said once per change; so does
    a certificate that is expired or not valid yet (one not valid yet is looked at again
    once it is)."""

    def __init__(self, tls: TlsSettings, *, listener: str) -> None:
        """Raises like :func:`server_ssl_context` when the files do not load at start, and
        :class:`CertificateNotValidNow` when the certificate is expired or not valid yet.
        :attr:`not_after`: when the certificate served now expires (a POSIX time)."""
        self._tls = tls
        self.listener = listener
        self._stamps = self._read_stamps()
        self._serving, self.not_after = self._load()
        self._refused: tuple[FileStamp, ...] | None = None
        self._retry_at: float | None = None  # refused files looked at again from then
        self._bundle_changed_at: float | None = None
        # The listening socket's context: the first one served. Its session cache is
        # the listener's for good, whichever context a handshake is handed to.
        self.context = self._serving
        self.context.sni_callback = self._hand_over

    def _load(self) -> tuple[ssl.SSLContext, float | None]:
        """A context from the files, and when its certificate expires (None: unreadable by
        ``cryptography``, which the context accepted). Raises CertificateNotValidNow when
        the certificate (the leaf: the file's first) is expired or not valid yet."""
        pem = self._tls.cert_file.read_bytes()
        context = server_ssl_context(self._tls)
        # The stamps were read before the files: one replaced while they are read here
        # changes them, and the next look loads everything again.
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except Exception:  # OpenSSL took it: only the expiry gauge and the check go without
            return context, None
        _check_validity(cert, self._tls.cert_file)
        return context, cert.not_valid_after_utc.timestamp()

    @property
    def interval(self) -> float:
        return self._tls.reload_interval

    def _files(self) -> list[Path]:
        tls = self._tls
        return [tls.cert_file, tls.key_file] + (
            [tls.client_ca_file] if tls.client_ca_file is not None else []
        )

    def _read_stamps(self) -> tuple[FileStamp, ...]:
        return tuple(_stamp(path) for path in self._files())

    def _hand_over(
        self, handshake: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        handshake.context = self._serving
        changed = self._bundle_changed_at
        if changed is not None and handshake.session_reused:
            # A session resumed is not verified again: one made before the client CA bundle
            # changed may hold a certificate the bundle no longer admits. Refused; the
            # client's next handshake is a full one, against the bundle of now.
            try:
                made = handshake.session.time if handshake.session is not None else None
            except ValueError:
                made = None
            if made is None or made <= changed:
                return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
        return None

    def reload(self) -> bool:
        """Read the files again if any changed; True when new handshakes now use them."""
        stamps = self._read_stamps()
        if stamps == self._stamps:
            return False
        if stamps == self._refused and (self._retry_at is None or time.time() < self._retry_at):
            return False
        try:
            fresh, expires = self._load()
        except CertificateNotValidNow as exc:
            if stamps != self._refused or exc.valid_from is None:  # once per change
                log.warning(
                    "%s listener: %s; still serving the certificate loaded before%s",
                    self.listener,
                    exc,
                    "" if exc.valid_from is None else ", until it is",
                )
            self._refused, self._retry_at = stamps, exc.valid_from
            return False
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._refused, self._retry_at = stamps, None
            log.warning(
                "%s listener: its TLS files changed but do not load (%s); still serving the"
                " certificate loaded before",
                self.listener,
                exc,
            )
            return False
        if self._tls.client_ca_file is not None and stamps[-1] != self._stamps[-1]:
            self._bundle_changed_at = time.time()
        self._serving, self.not_after = fresh, expires
        self._stamps, self._refused, self._retry_at = stamps, None, None
        log.info(
            "%s listener: TLS certificate reloaded from %s", self.listener, self._tls.cert_file
        )
        return True

    async def watch(self) -> None:
        """Reload every ``reload_interval`` until cancelled (never, when it is 0)."""
        if not self.interval:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.reload()
            except Exception:  # the watch outlives whatever one look at the files raises
                log.exception("%s listener: looking at its TLS files failed", self.listener)


class TlsWatch:
    """The :meth:`ServerTls.watch` task of a listener, started and stopped with it."""

    def __init__(self, tls: ServerTls | None) -> None:
        self._tls = tls
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._tls is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tls.watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:  # a stopping worker must go on closing its listeners
            log.exception("the TLS watch had failed")
