"""The pkcs11 provider for the contract suite, on a SoftHSM2 token made for this test session.

The token lives in a temporary directory: ``softhsm2.conf`` points ``directories.tokendir`` at
it, ``SOFTHSM2_CONF`` names that file before the module is loaded (SoftHSM reads it in
``C_Initialize``), and ``softhsm2-util --init-token --free`` makes the token. Without SoftHSM2
the tests skip locally and fail under CI=true (``make test`` installs Debian's ``softhsm2``).

Other tests that need the token call :func:`softhsm_token` (it is made once per session).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ci_support import service_missing
from dragoman.keys.pkcs11 import Pkcs11Provider
from dragoman.keys.provider import KeyProvider

from .harness import ProviderHarness

MODULE = os.environ.get("DRAGOMAN_TEST_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
TOKEN_LABEL = "dragoman-test"
PIN = "pin-4711-test"
SO_PIN = "so-pin-0815-test"


@dataclass(frozen=True)
class SoftHsmToken:
    module: str
    label: str
    pin: str
    conf: Path

    def provider(self, **overrides: Any) -> Pkcs11Provider:
        arguments: dict[str, Any] = {
            "module_path": self.module,
            "token_label": self.label,
            "pin": self.pin,
        }
        arguments.update(overrides)
        return Pkcs11Provider(**arguments)

    def library(self) -> Any:
        import pkcs11

        return pkcs11.lib(self.module)

    @contextmanager
    def session(self) -> Iterator[Any]:
        """A logged-in read/write session of the test's own, bypassing the provider.

        A PKCS#11 login belongs to the whole process, so no provider may hold one meanwhile
        (close them first).
        """
        token = self.library().get_token(token_label=self.label)
        session = token.open(rw=True, user_pin=self.pin)
        try:
            yield session
        finally:
            session.close()


_made: SoftHsmToken | None = None


def softhsm_token(request: pytest.FixtureRequest) -> SoftHsmToken:
    """The session's SoftHSM2 token (made on first use); skips or fails when SoftHSM2 is missing."""
    global _made
    if _made is not None:
        return _made
    util = shutil.which("softhsm2-util")
    if util is None or not Path(MODULE).is_file():
        missing = "softhsm2-util" if util is None else MODULE
        why = f"{missing} not found; `make test` installs Debian's softhsm2"
        service_missing("SoftHSM2", why)
    assert util is not None
    tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    root = tmp_path_factory.mktemp("softhsm2")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        "utf-8",
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    made = subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", PIN, "--so-pin", SO_PIN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if made.returncode != 0:
        pytest.fail(f"softhsm2-util --init-token failed: {made.stderr.strip()}", pytrace=False)
    token = SoftHsmToken(MODULE, TOKEN_LABEL, PIN, conf)

    from pkcs11.exceptions import NoSuchToken

    library = token.library()
    try:
        library.get_token(token_label=TOKEN_LABEL)
    except NoSuchToken:
        library.reinitialize()  # loaded earlier in this process, under another SOFTHSM2_CONF
        library.get_token(token_label=TOKEN_LABEL)
    _made = token
    return token


@pytest.fixture
async def pkcs11_provider(request: pytest.FixtureRequest) -> AsyncIterator[ProviderHarness]:
    token = softhsm_token(request)
    opened: list[Pkcs11Provider] = []

    def make() -> Pkcs11Provider:
        provider = token.provider()
        opened.append(provider)
        return provider

    async def reopen() -> KeyProvider:
        return make()

    yield ProviderHarness(make(), reopen)
    for provider in opened:
        await provider.close()
