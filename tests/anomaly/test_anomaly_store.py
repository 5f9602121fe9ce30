"""Where the counts live: several instances sharing Redis count one account once; with
Redis down, sensitive operations are refused (503 anomaly_unavailable) and never allowed
uncounted, while operations no rule names go on."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from anomaly_support import (
    FORWARDED,
    Backend,
    Caller,
    MakeStack,
    MovableClock,
    anomaly_overrides,
)

from dragoman.anomaly.redis_state import _verdict
from dragoman.anomaly.rules import RuleBook
from dragoman.anomaly.state import StateUnavailable
from dragoman.catalog.model import operations_from_settings
from dragoman.demo.runner import demo_settings
from dragoman.keys.sealing import new_master_key
from dragoman.settings import SettingsError, load_settings

BURST = {"burst": {"kind": "threshold", "threshold": 3, "window": "1m", "action": "block"}}
DOWN = Backend("redis", "redis://127.0.0.1:1/0")
"""Nothing listens on port 1: Redis is down."""


@pytest.mark.redis
async def test_two_instances_sharing_redis_count_one_account_once(
    make_stack: MakeStack,
    redis_backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
) -> None:
    backend = redis_backend
    # Instances of one deployment share the mapping store's index key (here set, since each
    # test stack has a master key of its own): counts are keyed on it.
    shared = {"mapping": {"encryption": {"index_key": new_master_key()}}}
    overrides = anomaly_overrides(backend, BURST, **shared)
    first = Caller(await make_stack(overrides, clock=clock), clock, http)
    second = Caller(await make_stack(overrides, clock=clock), clock, http)

    outcomes = [await (first, second)[n % 2].set_default() for n in range(4)]
    assert outcomes == [FORWARDED] * 3 + ["anomaly_blocked"]
    assert await first.set_default() == "anomaly_blocked"  # the block is shared too


async def test_redis_down_refuses_sensitive_operations_and_never_allows_them_silently(
    make_stack: MakeStack, clock: MovableClock, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(anomaly_overrides(DOWN, BURST), clock=clock)
    alice = Caller(stack, clock, http)
    for change in (alice.set_default, alice.add_card, alice.delete_card):
        assert await change() == "anomaly_unavailable"
        assert alice.last_problem is not None and alice.last_problem["status"] == 503
    assert stack.platform.seen == []


async def test_redis_down_leaves_operations_no_rule_names_alone(
    make_stack: MakeStack, clock: MovableClock, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(anomaly_overrides(DOWN, BURST), clock=clock)
    assert await Caller(stack, clock, http).list_cards() == FORWARDED


def demo(tmp_path: Path, anomaly: dict[str, object]) -> dict[str, object]:
    (tmp_path / "master.key").write_text("A" * 43)
    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8090",
        issuer="http://127.0.0.1:8070",
        console="http://127.0.0.1:8060",
        state_dir=tmp_path,
    )
    return {**data, "anomaly": anomaly}


@pytest.mark.parametrize(
    "answer",
    [None, "", "ok", "ok 0", "ok 0 - 3 - 1", "maybe 0 -", "blocked soon burst", b"ok 0 -"],
)
def test_a_redis_answer_not_of_the_scripts_shape_is_the_store_failing(answer: object) -> None:
    """Never a verdict (and never a 500): the stage then fails closed, as when Redis is down."""
    with pytest.raises(StateUnavailable):
        _verdict(answer, [])


def test_the_redis_backend_needs_a_redis_url(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=demo(tmp_path, {"backend": "redis"}))
    assert [p.key for p in caught.value.problems] == ["anomaly"]
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=demo(tmp_path, {"redis_url": "http://127.0.0.1:6379"}))
    assert [p.key for p in caught.value.problems] == ["anomaly.redis_url"]


def test_a_configured_rule_naming_nothing_in_the_catalog_is_refused_at_load(
    tmp_path: Path,
) -> None:
    # At load, so `dragoman check-config` refuses what `serve` would.
    rules = {"typo": {"operations": ["payment_method:create"]}}
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=demo(tmp_path, {"rules": rules}))
    (problem,) = caught.value.problems
    assert problem.key == "anomaly.rules.typo"
    assert problem.message == "names nothing in the catalog: payment_method:create"


def test_the_default_rules_name_the_demo_catalogs_sensitive_operations(tmp_path: Path) -> None:
    settings = load_settings(overrides=demo(tmp_path, {}))
    catalog = operations_from_settings(settings.catalog)
    book = RuleBook.from_settings(settings.anomaly, catalog)
    sensitive = sorted(op.id for op in catalog if book.feeds(op))
    assert sensitive == [
        "billing_address.update",
        "payment_methods.create",
        "payment_methods.delete",
        "payment_methods.set_default",
    ]
