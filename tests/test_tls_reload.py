"""A listener's certificate is renewed without a restart (`server.tls.reload_interval`,
`decision.tls.reload_interval`; dragoman.tls.ServerTls).

Real listeners on 127.0.0.1 and real TLS handshakes; certificates made at test time. What
the renewing side does is what cert-manager or a mounted secret does: new files put in
place (atomically, or one after the other), and sometimes files that do not go together.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import Issued, name
from dragoman.demo.runner import write_toml
from dragoman.observability.tls import EXPIRY, TlsCollector
from dragoman.server import unloadable_tls
from dragoman.settings import load_settings
from dragoman.tls import ServerTls
from serve_support import DRAGOMAN, free_port, serving, standalone_settings
from settings_support import settings_problems
from tls_support import (
    ClientCas,
    Listen,
    ServerFiles,
    client_cas,
    client_of,
    first_files,
    tls_listeners,
)


async def presented(port: int, client: ssl.SSLContext) -> str:
    """The common name of the certificate a new connection to ``port`` is shown."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        common_name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        return common_name.removeprefix("CN=")
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
def files(tmp_path: Path) -> ServerFiles:
    return first_files(tmp_path)


@pytest.fixture
async def listen() -> AsyncIterator[Listen]:
    async with tls_listeners() as serve:
        yield serve


async def test_new_connections_get_the_renewed_certificate(
    files: ServerFiles, listen: Listen
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    assert await presented(port, files.client()) == "first"
    files.put(files.issue("renewed"))
    assert tls.reload()
    assert await presented(port, files.client()) == "renewed"


async def test_a_connection_open_before_the_renewal_keeps_working(
    files: ServerFiles, listen: Listen
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=files.client())
    files.put(files.issue("renewed"))
    assert tls.reload()
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_unchanged_files_are_not_read_again(
    files: ServerFiles, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    caplog.set_level(logging.INFO, "dragoman.tls")
    assert not tls.reload()
    assert caplog.records == []


async def test_renewal_is_logged_naming_the_listener(
    files: ServerFiles, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(files.settings(), listener="decision")
    caplog.set_level(logging.INFO, "dragoman.tls")
    files.put(files.issue("renewed"))
    tls.reload()
    assert [r.getMessage() for r in caplog.records] == [
        f"decision listener: TLS certificate reloaded from {files.cert_file}"
    ]


async def test_a_certificate_without_its_key_keeps_the_previous_one_serving(
    files: ServerFiles, listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    files.put_cert_only(files.issue("renewed"))  # the old key stays: they do not match
    assert not tls.reload()
    assert await presented(port, files.client()) == "first"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("proxy listener: its TLS files changed but do not load (")
    assert "still serving the certificate loaded before" in warning


async def test_files_that_do_not_load_are_reported_once_until_they_change_again(
    files: ServerFiles, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    files.put_cert_only(files.issue("renewed"))
    for _ in range(3):
        assert not tls.reload()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_a_pair_written_one_file_at_a_time_loads_once_both_are_in_place(
    files: ServerFiles, listen: Listen
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    renewed = files.issue("renewed")
    files.put_cert_only(renewed)
    assert not tls.reload()
    files.put_key_only(renewed)
    assert tls.reload()
    assert await presented(port, files.client()) == "renewed"


async def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(
    files: ServerFiles, listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    renewed = files.issue("renewed")
    files.put_cert_only(renewed)
    files.key_file.write_bytes(
        renewed.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"not given to dragoman"),
        )
    )
    assert not tls.reload()  # returns: OpenSSL's prompt on the terminal would hang here
    assert "the private key is encrypted" in caplog.text
    assert await presented(port, files.client()) == "first"


async def test_missing_files_keep_the_previous_certificate_serving(
    files: ServerFiles, listen: Listen
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    files.key_file.unlink()
    assert not tls.reload()
    assert await presented(port, files.client()) == "first"


def out_of_date(
    files: ServerFiles, common_name: str, *, starts: timedelta, ends: timedelta
) -> Issued:
    """A certificate for 127.0.0.1 valid from ``starts`` to ``ends`` after now (negative:
    before now)."""
    at = datetime.now(UTC)
    return files.authority.issue(
        subject=name(common_name), ips=["127.0.0.1"], not_before=at + starts, not_after=at + ends
    )


def expired(files: ServerFiles) -> Issued:
    return out_of_date(files, "expired", starts=timedelta(days=-30), ends=timedelta(days=-1))


def not_valid_yet(files: ServerFiles, *, starts: timedelta = timedelta(days=7)) -> Issued:
    return out_of_date(files, "early", starts=starts, ends=timedelta(days=90))


async def test_an_expired_renewal_keeps_the_previous_certificate_serving(
    files: ServerFiles, listen: Listen
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    files.put(expired(files))
    assert not tls.reload()
    assert await presented(port, files.client()) == "first"


async def test_a_renewal_not_valid_yet_keeps_the_previous_certificate_serving(
    files: ServerFiles, listen: Listen
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    files.put(not_valid_yet(files))
    assert not tls.reload()
    assert await presented(port, files.client()) == "first"


async def test_an_expired_renewal_is_logged_naming_the_file_and_when_it_expired(
    files: ServerFiles, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    renewal = expired(files)
    files.put(renewal)
    tls.reload()
    until = renewal.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"proxy listener: the certificate in {files.cert_file} has expired (valid until"
        f" {until}); still serving the certificate loaded before"
    ]


async def test_a_renewal_not_valid_yet_is_logged_naming_the_file_and_when_it_becomes_valid(
    files: ServerFiles, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    renewal = not_valid_yet(files)
    files.put(renewal)
    for _ in range(3):
        tls.reload()
    since = renewal.cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"proxy listener: the certificate in {files.cert_file} is not valid yet (valid from"
        f" {since}); still serving the certificate loaded before, until it is"
    ]


async def test_a_renewal_not_valid_yet_is_served_once_it_is_valid(
    files: ServerFiles, listen: Listen
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    port = await listen(tls)
    renewal = not_valid_yet(files, starts=timedelta(seconds=2))
    files.put(renewal)
    assert not tls.reload()
    time.sleep(max(0.0, renewal.cert.not_valid_before_utc.timestamp() - time.time()) + 0.1)
    assert tls.reload()  # the files did not change: the time did
    assert await presented(port, files.client()) == "early"


async def test_expiry_gauge_keeps_the_served_certificate_when_a_renewal_has_expired(
    files: ServerFiles,
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    before = scraped_expiry([tls])
    files.put(expired(files))
    assert not tls.reload()
    assert scraped_expiry([tls]) == before


async def answered(port: int, client: ssl.SSLContext) -> bool:
    """Whether a request on a new connection made with ``client`` gets its answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status = await reader.readline()
        writer.close()
        return status.startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, ConnectionError):
        return False


@pytest.fixture
def cas(files: ServerFiles, tmp_path: Path) -> ClientCas:
    return client_cas(files, tmp_path, listener="proxy")


async def test_a_renewed_client_ca_bundle_admits_the_new_ca_certificates(
    files: ServerFiles,
    listen: Listen,
    tmp_path: Path,
    cas: ClientCas,
) -> None:
    port = await listen(cas.tls)
    client = client_of(files, cas.new, tmp_path / "client")
    assert not await answered(port, client)
    assert cas.swap()
    assert await answered(port, client)


async def test_a_ca_removed_from_the_bundle_admits_none_of_its_certificates_after_reload(
    files: ServerFiles,
    listen: Listen,
    tmp_path: Path,
    cas: ClientCas,
) -> None:
    # A compromised client CA taken out of the bundle must stop admitting at once, not at
    # the next restart: the handshake verifies against the reloaded context's CAs.
    port = await listen(cas.tls)
    client = client_of(files, cas.old, tmp_path / "client")
    assert await answered(port, client)
    assert cas.swap()
    assert not await answered(port, client)


async def test_watch_reloads_every_interval(files: ServerFiles, listen: Listen) -> None:
    tls = ServerTls(files.settings(reload_interval="50ms"), listener="proxy")
    port = await listen(tls)
    watch = asyncio.create_task(tls.watch())
    try:
        files.put(files.issue("renewed"))
        while await presented(port, files.client()) != "renewed":
            await asyncio.sleep(0.02)
    finally:
        watch.cancel()


async def test_watch_with_interval_zero_never_reloads(files: ServerFiles) -> None:
    tls = ServerTls(files.settings(reload_interval=0), listener="proxy")
    await asyncio.wait_for(tls.watch(), timeout=5)  # returns at once instead of looping


def expiry(issued: Issued) -> float:
    return issued.cert.not_valid_after_utc.timestamp()


def scraped_expiry(tls: list[ServerTls]) -> dict[str, float]:
    (family,) = TlsCollector(tls).collect()
    assert family.name == EXPIRY
    return {sample.labels["listener"]: sample.value for sample in family.samples}


async def test_expiry_gauge_names_each_listener_and_its_certificates_expiry(
    files: ServerFiles, tmp_path: Path
) -> None:
    proxy = ServerTls(files.settings(), listener="proxy")
    other = ServerFiles(tmp_path / "decision")
    issued = other.issue("decision", days=30)
    other.put(issued)
    decision = ServerTls(other.settings(), listener="decision")
    gauge = scraped_expiry([proxy, decision])
    assert gauge.keys() == {"proxy", "decision"}
    assert gauge["decision"] == expiry(issued)


async def test_expiry_gauge_follows_a_renewal(files: ServerFiles) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    renewed = files.issue("renewed", days=90)
    files.put(renewed)
    assert tls.reload()
    assert scraped_expiry([tls]) == {"proxy": expiry(renewed)}


async def test_expiry_gauge_keeps_the_served_certificate_when_a_renewal_does_not_load(
    files: ServerFiles,
) -> None:
    tls = ServerTls(files.settings(), listener="proxy")
    before = scraped_expiry([tls])
    files.put_cert_only(files.issue("renewed", days=90))  # its key is not there
    assert not tls.reload()
    assert scraped_expiry([tls]) == before


def test_reload_interval_defaults_to_a_minute(files: ServerFiles) -> None:
    assert files.settings().reload_interval == 60.0


@pytest.mark.parametrize("listener", ["server", "decision"])
def test_negative_reload_interval_is_refused_naming_the_key(
    files: ServerFiles, tmp_path: Path, listener: str
) -> None:
    def edit(data: dict[str, Any]) -> None:
        data.setdefault(listener, {})["tls"] = {**files_table(files), "reload_interval": "-1s"}

    problems = settings_problems(tmp_path, edit)
    assert f"{listener}.tls.reload_interval" in problems


def files_table(files: ServerFiles) -> dict[str, str]:
    return {"cert_file": str(files.cert_file), "key_file": str(files.key_file)}


# -- `dragoman serve`: every worker process follows the files ------------------------------------


def test_serve_with_a_certificate_and_key_that_do_not_match_exits_2_naming_the_setting(
    files: ServerFiles, tmp_path: Path
) -> None:
    files.put_cert_only(files.issue("renewed"))
    settings = standalone_settings(tmp_path, free_port(), scheme="https")
    settings["server"]["tls"] = files_table(files)
    config = tmp_path / "dragoman.toml"
    write_toml(settings, config)
    result = subprocess.run(
        [DRAGOMAN, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cannot start: server.tls: the certificate and key do not load (" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_an_expired_certificate_exits_2_naming_the_file(
    files: ServerFiles, tmp_path: Path
) -> None:
    files.put(expired(files))
    settings = standalone_settings(tmp_path, free_port(), scheme="https")
    settings["server"]["tls"] = files_table(files)
    config = tmp_path / "dragoman.toml"
    write_toml(settings, config)
    result = subprocess.run(
        [DRAGOMAN, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert (
        f"cannot start: server.tls: the certificate in {files.cert_file} has expired (valid until"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_certificate_not_valid_yet_refuses_the_start_naming_the_file(
    files: ServerFiles, tmp_path: Path
) -> None:
    files.put(not_valid_yet(files))
    settings = standalone_settings(tmp_path, free_port(), scheme="https")
    settings["server"]["tls"] = files_table(files)
    config = tmp_path / "dragoman.toml"
    write_toml(settings, config)
    refused = unloadable_tls(load_settings(config))
    assert refused is not None
    assert refused.startswith(
        f"server.tls: the certificate in {files.cert_file} is not valid yet (valid from "
    )


@pytest.mark.slow
async def test_every_worker_of_dragoman_serve_presents_the_renewed_certificate(
    files: ServerFiles, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    settings = standalone_settings(tmp_path, port, scheme="https")
    settings["server"]["tls"] = {**files_table(files), "reload_interval": "100ms"}
    settings["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": metrics_port}
    config = tmp_path / "dragoman.toml"
    write_toml(settings, config)
    log = tmp_path / "dragoman.log"
    with serving(config, log) as process:
        while log.read_text("utf-8").count(" serving on https://") < 2:  # both workers
            assert process.poll() is None, log.read_text("utf-8")
            await asyncio.sleep(0.05)
        assert await presented(port, files.client()) == "first"
        renewed = files.issue("renewed", days=90)
        files.put(renewed)
        # Connections spread over both workers (SO_REUSEPORT): once many in a row all
        # show the renewed certificate, each worker has reloaded.
        seen: list[str] = []
        while seen[-40:] != ["renewed"] * 40:
            seen.append(await presented(port, files.client()))
        async with aiohttp.ClientSession() as http:
            for _ in range(10):  # scrapes reach either worker: each reports the renewal
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as scrape:
                    text = await scrape.text()
                (line,) = [s for s in text.splitlines() if s.startswith(EXPIRY + "{")]
                labels, value = line.split(" ")
                assert labels == f'{EXPIRY}{{listener="proxy"}}'
                assert float(value) == expiry(renewed)
        assert process.poll() is None
    assert log.read_text("utf-8").count("proxy listener: TLS certificate reloaded") == 2
