"""`dragoman keys list | rotate [--now] | retire KID`, run as the real executable against the
key set of a SQLite file and of the real PostgreSQL.

The first key is made the way a proxy makes it when it starts: a key ring from the same
settings file settles on the empty key set. A kid is base64url and may begin with "-", so
`keys retire` is given it after "--".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dragoman.keys.factory import open_key_ring
from dragoman.keys.sealing import new_master_key
from dragoman.settings import load_settings
from dragoman.state import migrate
from dragoman.state.sql import make_engine
from postgres_support import empty_database

PREPUBLISH = 600.0  # the default keys.prepublish
OVERLAP = 60.0  # the default keys.overlap
TOLERANCE = 5.0
SKEWED_CLOCK = Path(__file__).with_name("skewed_clock")  # its sitecustomize shifts time.time
FIELDS = {
    "kid",
    "generation",
    "state",
    "provider",
    "ref",
    "activates_at",
    "deactivates_at",
    "verify_until",
    "retired_at",
    "created_by",
}


def epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def start_a_proxy_ring(config: Path) -> str:
    """What a starting proxy does to the key set: settle (make the first key if none).
    Returns the current kid."""
    settings = load_settings(config)

    async def go() -> str:
        engine = make_engine(settings.store.database_url, pool_size=1)
        try:
            await migrate.upgrade(engine)
            ring = open_key_ring(settings.keys, settings.store, engine)
            try:
                await ring.settle()
                current = ring.current_key()
                assert current is not None
                return current.kid
            finally:
                await ring.close()
        finally:
            await engine.dispose()

    return asyncio.run(go())


def listed(dragoman: Any, config: Path) -> list[dict[str, Any]]:
    result = dragoman("keys", "list", "-c", config)
    assert result.returncode == 0, result.stderr
    return lines(result.stdout)


@pytest.fixture
def first_kid(config: Path) -> str:
    return start_a_proxy_ring(config)


# -- keys list -----------------------------------------------------------------------------------


def test_list_shows_the_first_key_as_current_with_its_timeline_fields(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    [key] = listed(dragoman, config)
    assert set(key) == FIELDS
    assert key["kid"] == first_kid
    assert (key["state"], key["generation"], key["provider"]) == ("current", 1, "local")
    assert key["ref"] == first_kid
    assert abs(epoch(key["activates_at"]) - time.time()) < TOLERANCE  # type: ignore[operator]
    assert (key["deactivates_at"], key["verify_until"], key["retired_at"]) == (None, None, None)


def test_list_names_the_key_by_its_rfc7638_thumbprint(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    # The kid of the published key recomputed from its public members (hashlib and json).
    settings = load_settings(config)

    async def jwks() -> dict[str, Any]:
        engine = make_engine(settings.store.database_url, pool_size=1)
        try:
            ring = open_key_ring(settings.keys, settings.store, engine)
            await ring.refresh()
            await ring.close()
            return ring.jwks()
        finally:
            await engine.dispose()

    [jwk] = asyncio.run(jwks())["keys"]
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode())
    expected = base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")
    [key] = listed(dragoman, config)
    assert key["kid"] == expected == first_kid


def test_list_of_an_empty_key_set_prints_nothing(dragoman: Any, config: Path) -> None:
    result = dragoman("keys", "list", "-c", config)
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


# -- keys rotate ---------------------------------------------------------------------------------


def test_rotate_prints_the_pending_successor_activating_prepublish_from_now(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    before = time.time()
    result = dragoman("keys", "rotate", "-c", config)
    after = time.time()
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert set(made) == FIELDS
    assert made["kid"] != first_kid
    assert (made["state"], made["generation"]) == ("pending", 2)
    activates = epoch(made["activates_at"])
    assert activates is not None
    assert before + PREPUBLISH - TOLERANCE <= activates <= after + PREPUBLISH + TOLERANCE


def test_rotate_ends_the_current_key_when_the_successor_activates(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    made = json.loads(dragoman("keys", "rotate", "-c", config).stdout)
    old, new = listed(dragoman, config)
    assert (old["kid"], old["state"]) == (first_kid, "current")
    assert old["deactivates_at"] == made["activates_at"]
    assert epoch(old["verify_until"]) == epoch(made["activates_at"]) + OVERLAP  # type: ignore[operator]
    assert (new["kid"], new["state"]) == (made["kid"], "pending")


def test_second_rotate_exits_1_with_a_message(dragoman: Any, config: Path, first_kid: str) -> None:
    assert dragoman("keys", "rotate", "-c", config).returncode == 0
    again = dragoman("keys", "rotate", "-c", config)
    assert again.returncode == 1
    assert "already scheduled" in again.stderr
    assert again.stdout == ""
    assert len(listed(dragoman, config)) == 2


def test_rotate_now_makes_the_successor_current_at_once(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    result = dragoman("keys", "rotate", "--now", "-c", config)
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert made["state"] == "current"
    old, new = listed(dragoman, config)
    assert (old["kid"], old["state"]) == (first_kid, "previous")
    assert (new["kid"], new["state"]) == (made["kid"], "current")


def test_rotate_now_is_refused_while_a_successor_is_pending(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    assert dragoman("keys", "rotate", "-c", config).returncode == 0
    again = dragoman("keys", "rotate", "--now", "-c", config)
    assert again.returncode == 1
    assert "already scheduled" in again.stderr


def test_rotate_now_while_a_successor_is_pending_names_it_and_the_way_to_replace_the_key(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    scheduled = json.loads(dragoman("keys", "rotate", "-c", config).stdout)
    again = dragoman("keys", "rotate", "--now", "-c", config)
    assert f"kid {scheduled['kid']}, activates at {scheduled['activates_at']}" in again.stderr
    assert f"dragoman keys retire --kid {first_kid}" in again.stderr


# -- keys retire ---------------------------------------------------------------------------------


def test_retire_of_the_current_key_retires_it_and_a_new_key_is_current(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    result = dragoman("keys", "retire", "-c", config, "--kid", first_kid)
    assert result.returncode == 0, result.stderr
    retired = json.loads(result.stdout)
    assert (retired["kid"], retired["state"]) == (first_kid, "retired")
    assert retired["retired_at"] is not None
    old, new = listed(dragoman, config)
    assert (old["kid"], old["state"]) == (first_kid, "retired")
    assert new["state"] == "current"
    assert new["kid"] != first_kid


def test_retire_of_the_current_key_while_a_successor_is_pending_makes_a_new_key_current(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    pending = json.loads(dragoman("keys", "rotate", "-c", config).stdout)
    result = dragoman("keys", "retire", "-c", config, "--kid", first_kid)
    assert result.returncode == 0, result.stderr
    old, unused, new = listed(dragoman, config)
    assert (old["kid"], old["state"]) == (first_kid, "retired")
    assert (unused["kid"], unused["state"]) == (pending["kid"], "retired")
    assert new["state"] == "current"
    assert abs(epoch(new["activates_at"]) - time.time()) < TOLERANCE  # type: ignore[operator]


def test_retire_of_a_previous_key_retires_it_and_leaves_the_current_key(
    dragoman: Any, config: Path, first_kid: str
) -> None:
    made = json.loads(dragoman("keys", "rotate", "--now", "-c", config).stdout)
    result = dragoman("keys", "retire", "-c", config, "--kid", first_kid)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "retired"
    states = [(k["kid"], k["state"]) for k in listed(dragoman, config)]
    assert states == [(first_kid, "retired"), (made["kid"], "current")]


def test_retire_of_an_unknown_kid_exits_1(dragoman: Any, config: Path, first_kid: str) -> None:
    result = dragoman("keys", "retire", "-c", config, "--kid", "no-such-kid")
    assert result.returncode == 1
    assert "no-such-kid" in result.stderr
    assert "Traceback" not in result.stderr
    assert [k["state"] for k in listed(dragoman, config)] == ["current"]


# -- the master key ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("rotate",), ("rotate", "--now")])
def test_wrong_master_key_exits_2_with_a_clear_message(
    dragoman: Any,
    write_settings: Any,
    database_url: str,
    tmp_path: Path,
    first_kid: str,
    command: tuple[str, ...],
) -> None:
    wrong = new_master_key()
    wrong_file = tmp_path / "wrong.key"
    wrong_file.write_text(wrong)

    def use_wrong_key(data: dict[str, Any]) -> None:
        data["keys"]["master_key_file"] = str(wrong_file)

    config = write_settings(database_url, edit=use_wrong_key, name="wrong.toml")
    result = dragoman("keys", *command, "-c", config)
    assert result.returncode == 2
    assert "master key" in result.stderr
    assert wrong not in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_master_key_adds_no_key_to_the_set(
    dragoman: Any,
    write_settings: Any,
    database_url: str,
    config: Path,
    tmp_path: Path,
    first_kid: str,
) -> None:
    # A key sealed under another master key could not be used by the proxies once current.
    wrong_file = tmp_path / "wrong.key"
    wrong_file.write_text(new_master_key())

    def use_wrong_key(data: dict[str, Any]) -> None:
        data["keys"]["master_key_file"] = str(wrong_file)

    wrong = write_settings(database_url, edit=use_wrong_key, name="wrong.toml")
    dragoman("keys", "rotate", "-c", wrong)
    assert [k["kid"] for k in listed(dragoman, config)] == [first_kid]


def test_master_key_that_is_not_32_bytes_exits_2_naming_the_setting(
    dragoman: Any, write_settings: Any, database_url: str
) -> None:
    def short_key(data: dict[str, Any]) -> None:
        data["keys"].pop("master_key_file")
        data["keys"]["master_key"] = "c2hvcnQ"

    config = write_settings(database_url, edit=short_key, name="short.toml")
    result = dragoman("keys", "list", "-c", config)
    assert result.returncode == 2
    assert "keys.master_key" in result.stderr
    assert "c2hvcnQ" not in result.stderr


def test_new_master_key_prints_32_bytes_of_base64url(dragoman: Any) -> None:
    result = dragoman("keys", "new-master-key")
    assert result.returncode == 0
    text = result.stdout.strip()
    assert len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))) == 32


# -- a host whose clock is off the key store's -----------------------------------------------------


def off_by(seconds: float) -> dict[str, str]:
    """The environment of a `dragoman` whose wall clock reads ``seconds`` off the real one."""
    return {"PYTHONPATH": str(SKEWED_CLOCK), "SKEWED_CLOCK_OFFSET": str(seconds)}


@pytest.fixture
def pg_config(write_settings: Any, pg_url: str) -> Path:
    """Settings on PostgreSQL, whose server clock the CLI compares its own with (SQLite has
    none)."""
    asyncio.run(empty_database(pg_url))
    return write_settings(pg_url, name="pg.toml")  # type: ignore[no-any-return]


@pytest.mark.parametrize("command", [("rotate",), ("rotate", "--now")])
def test_rotate_from_a_host_whose_clock_is_ahead_exits_2_and_makes_no_key(
    dragoman: Any, pg_config: Path, command: tuple[str, ...]
) -> None:
    start_a_proxy_ring(pg_config)
    result = dragoman("keys", *command, "-c", pg_config, env=off_by(3600))
    assert result.returncode == 2
    assert "ahead of the key store's: not rotating" in result.stderr
    assert "Traceback" not in result.stderr
    assert [k["state"] for k in listed(dragoman, pg_config)] == ["current"]


def test_rotate_from_a_host_whose_clock_is_behind_exits_2(dragoman: Any, pg_config: Path) -> None:
    start_a_proxy_ring(pg_config)
    result = dragoman("keys", "rotate", "-c", pg_config, env=off_by(-3600))
    assert result.returncode == 2
    assert "behind the key store's: not rotating" in result.stderr


def test_retire_from_a_host_whose_clock_is_ahead_exits_2_and_retires_nothing(
    dragoman: Any, pg_config: Path
) -> None:
    kid = start_a_proxy_ring(pg_config)
    result = dragoman("keys", "retire", "-c", pg_config, "--kid", kid, env=off_by(3600))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "this instance's clock is 3600.0 s ahead of the key store's: not retiring"
    ]
    (key,) = listed(dragoman, pg_config)
    assert (key["kid"], key["state"], key["retired_at"]) == (kid, "current", None)


def test_list_from_a_host_whose_clock_is_off_warns_and_lists(
    dragoman: Any, pg_config: Path
) -> None:
    kid = start_a_proxy_ring(pg_config)
    result = dragoman("keys", "list", "-c", pg_config, env=off_by(-3600))
    assert result.returncode == 0, result.stderr
    assert "warning: this instance's clock is" in result.stderr
    assert "behind the key store's; the states below are by this host's clock" in result.stderr
    assert [k["kid"] for k in lines(result.stdout)] == [kid]


def test_rotate_from_a_host_within_the_skew_limit_schedules_the_successor(
    dragoman: Any, pg_config: Path
) -> None:
    start_a_proxy_ring(pg_config)
    result = dragoman("keys", "rotate", "-c", pg_config, env=off_by(3))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "pending"
    assert "clock" not in result.stderr


# -- replacing the master key (docs/keys.md) -----------------------------------------------------


def settings_with_a_new_master_key(
    dragoman: Any, write_settings: Any, database_url: str, tmp_path: Path
) -> Path:
    """The same settings, with a master key made by `dragoman keys new-master-key`."""
    made = dragoman("keys", "new-master-key")
    assert made.returncode == 0, made.stderr
    key_file = tmp_path / "new-master.key"
    key_file.write_text(made.stdout, "utf-8")
    key_file.chmod(0o600)

    def use_new_key(data: dict[str, Any]) -> None:
        data["keys"]["master_key_file"] = str(key_file)

    return write_settings(database_url, edit=use_new_key, name="new.toml")  # type: ignore[no-any-return]


def signed_by_a_proxy(config: Path) -> tuple[str, bool]:
    """A proxy started with ``config`` signs: the kid it signed with, and whether the
    signature verifies under that key's published JWK (checked with cryptography)."""
    settings = load_settings(config)
    data = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjdXNfYWxpY2UifQ"

    async def go() -> tuple[str, bool]:
        engine = make_engine(settings.store.database_url, pool_size=1)
        try:
            ring = open_key_ring(settings.keys, settings.store, engine)
            try:
                await ring.settle()
                key, signature = await ring.sign(lambda key: data)
            finally:
                await ring.close()
        finally:
            await engine.dispose()
        x, y = (
            int.from_bytes(base64.urlsafe_b64decode(key.public_jwk[c] + "=="), "big")
            for c in ("x", "y")
        )
        public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            public.verify(der, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return key.kid, False
        return key.kid, True

    return asyncio.run(go())


def test_master_key_replacement_as_documented_ends_with_one_current_key_under_the_new_one(
    dragoman: Any,
    write_settings: Any,
    database_url: str,
    config: Path,
    tmp_path: Path,
    first_kid: str,
) -> None:
    # A key set with a previous, a current and a pending key, all under the old master key.
    assert dragoman("keys", "rotate", "--now", "-c", config).returncode == 0
    assert dragoman("keys", "rotate", "-c", config).returncode == 0
    new = settings_with_a_new_master_key(dragoman, write_settings, database_url, tmp_path)
    [current] = [k["kid"] for k in listed(dragoman, new) if k["state"] == "current"]
    retired = dragoman("keys", "retire", "-c", new, "--new-master-key", "--kid", current)
    assert retired.returncode == 0, retired.stderr
    for key in listed(dragoman, new):
        if key["state"] == "previous":
            result = dragoman("keys", "retire", "-c", new, "--kid", key["kid"])
            assert result.returncode == 0, result.stderr
    keys = listed(dragoman, new)
    assert [k["state"] for k in keys] == ["retired"] * 3 + ["current"]
    assert signed_by_a_proxy(new) == (keys[-1]["kid"], True)


def test_rotate_now_with_new_master_key_makes_a_current_key_once_every_key_is_retired(
    dragoman: Any,
    write_settings: Any,
    database_url: str,
    tmp_path: Path,
    first_kid: str,
) -> None:
    new = settings_with_a_new_master_key(dragoman, write_settings, database_url, tmp_path)
    refused = dragoman("keys", "retire", "-c", new, "--kid", first_kid)  # without the flag
    assert refused.returncode == 2
    assert "--new-master-key" in refused.stderr
    assert [k["state"] for k in listed(dragoman, new)] == ["retired"]
    result = dragoman("keys", "rotate", "--now", "--new-master-key", "-c", new)
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert made["state"] == "current"
    assert signed_by_a_proxy(new) == (made["kid"], True)


def test_new_master_key_flag_adds_no_key_while_a_key_can_sign(
    dragoman: Any,
    write_settings: Any,
    database_url: str,
    config: Path,
    tmp_path: Path,
    first_kid: str,
) -> None:
    wrong = settings_with_a_new_master_key(dragoman, write_settings, database_url, tmp_path)
    result = dragoman("keys", "rotate", "--now", "--new-master-key", "-c", wrong)
    assert result.returncode == 2
    assert "does not open the key that signs now or next" in result.stderr
    assert [k["kid"] for k in listed(dragoman, config)] == [first_kid]


def test_the_old_master_key_adds_no_key_once_it_is_replaced(
    dragoman: Any,
    write_settings: Any,
    database_url: str,
    config: Path,
    tmp_path: Path,
    first_kid: str,
) -> None:
    new = settings_with_a_new_master_key(dragoman, write_settings, database_url, tmp_path)
    replaced = dragoman("keys", "retire", "-c", new, "--new-master-key", "--kid", first_kid)
    assert replaced.returncode == 0, replaced.stderr
    before = [k["kid"] for k in listed(dragoman, new)]
    result = dragoman("keys", "rotate", "--now", "-c", config)
    assert result.returncode == 2
    assert "master key" in result.stderr
    assert [k["kid"] for k in listed(dragoman, new)] == before


# -- retiring with another provider's settings ---------------------------------------------------


def test_retire_with_another_providers_settings_exits_2_naming_the_key_left_enabled(
    dragoman: Any, write_settings: Any, database_url: str, config: Path, first_kid: str
) -> None:
    assert dragoman("keys", "rotate", "--now", "-c", config).returncode == 0  # first: previous

    def use_pkcs11(data: dict[str, Any]) -> None:
        data["keys"]["provider"] = "pkcs11"
        data["keys"]["pkcs11"] = {"pin": "not-used-here"}  # the token is never reached

    hsm = write_settings(database_url, edit=use_pkcs11, name="hsm.toml")
    result = dragoman("keys", "retire", "-c", hsm, "--kid", first_kid)
    assert result.returncode == 2
    assert json.loads(result.stdout)["state"] == "retired"  # the retirement stands
    assert (
        f"warning: key {first_kid} is retired but still enabled at the local provider ({first_kid})"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_retire_again_with_the_keys_own_provider_settings_disables_it_and_exits_0(
    dragoman: Any, write_settings: Any, database_url: str, config: Path, first_kid: str
) -> None:
    assert dragoman("keys", "rotate", "--now", "-c", config).returncode == 0

    def use_pkcs11(data: dict[str, Any]) -> None:
        data["keys"]["provider"] = "pkcs11"
        data["keys"]["pkcs11"] = {"pin": "not-used-here"}  # the token is never reached

    hsm = write_settings(database_url, edit=use_pkcs11, name="hsm.toml")
    assert dragoman("keys", "retire", "-c", hsm, "--kid", first_kid).returncode == 2
    again = dragoman("keys", "retire", "-c", config, "--kid", first_kid)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
