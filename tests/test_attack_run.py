"""After an attack run on a proxy with every protection on (browser CSRF, rate limits,
anomaly detection, the hash-chained audit), no token, CSRF token, card number or secret is
found in any log line, audit record, alert or answer (SEMANTICS §7, §8; issue 7).

The run: forged, key-confused and unsigned bearer tokens; card numbers in bodies, queries and
headers; CSRF attempts with a missing, guessed, foreign and misplaced token (in the query, the
body, the bearer slot); writes past the rate limit; and add/delete pairs until the account is
blocked for card testing. The legitimate requests in it must have worked."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"
CARDS = ("4111 1111 1111 1111", "4242424242424242", "5555-5555-5555-4444")
COOKIE = "__Host-dragoman-csrf"


async def post(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: Any
) -> tuple[int, str]:
    async with http.post(url, headers=headers, json=body) as response:
        return response.status, await response.text()


async def test_no_secret_reaches_logs_audit_alerts_or_answers_after_an_attack_run(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stack = await make_stack({"browser": {"csrf": "browser"}})
    proxy = stack.urls["proxy"]
    issuer = stack.issuer
    good = issuer.token("alice", "acct-1001", roles=["billing_admin"])
    claims = issuer.claims("alice", "acct-1001", roles=["billing_admin"])
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": issuer.rsa_kid})
    unsigned = jwt.encode(claims, None, algorithm="none")
    widget = {"Origin": proxy, "Sec-Fetch-Site": "same-origin"}

    async with http.post(
        proxy + "/_dragoman/session", headers={**widget, "Authorization": f"Bearer {good}"}
    ) as r:
        csrf = (await r.json())["csrf_token"]
    async with http.post(
        proxy + "/_dragoman/session", headers={"Authorization": f"Bearer {good}"}
    ) as r:
        foreign = (await r.json())["csrf_token"]  # another session of the same user
    answers: list[str] = []

    def browser(bearer: str, header: str | None, cookie: str | None = csrf) -> dict[str, str]:
        headers = {**widget, "Authorization": f"Bearer {bearer}"}
        if header is not None:
            headers["X-CSRF-Token"] = header
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        return headers

    card = {"card_number": CARDS[0], "exp_month": 1, "exp_year": 2031}
    attempts: list[tuple[str, dict[str, str], Any]] = [
        (PM, browser(forged, csrf), card),
        (PM, browser(unsigned, csrf), card),
        (PM, browser(csrf, csrf), card),  # the CSRF token in the bearer slot
        (PM, browser(good, None), card),  # no header
        (PM, browser(good, "A" * 43 + "." + "B" * 43 + "." + "C" * 43), card),  # guessed
        (PM, browser(good, foreign), card),  # another session's token
        (f"{PM}?csrf_token={csrf}&card={CARDS[1]}", browser(good, None), card),
        (PM, browser(good, None), {**card, "csrf_token": csrf}),
        (PM, {**browser(good, csrf), "X-Card": CARDS[2]}, {**card, "card_number": CARDS[2]}),
    ]
    for path, headers, body in attempts:
        _, text = await post(http, proxy + path, headers, body)
        answers.append(text)

    # Card testing: add/delete pairs until the account's sensitive operations are blocked
    # (an alert goes to the log sink).
    outcomes = []
    for _ in range(3):
        for method, path in (("POST", PM), ("DELETE", f"{PM}/pm_missing")):
            async with http.request(
                method,
                proxy + path,
                headers=browser(good, csrf),
                json=card if method == "POST" else None,
            ) as r:
                answers.append(await r.text())
                outcomes.append(r.status)
    assert outcomes[0] == 201 and outcomes[-1] == 403  # allowed, then blocked

    # Past the rate limit (the change tier allows a burst of 10 per account).
    statuses = []
    for _ in range(12):
        status, text = await post(http, proxy + PM, browser(good, csrf), card)
        statuses.append(status)
        answers.append(text)
    assert statuses[-1] == 429

    secrets = [good, forged, unsigned, csrf, foreign, *CARDS]
    secrets += [c.replace(" ", "").replace("-", "") for c in CARDS]
    secrets += [part for token in (csrf, foreign) for part in token.split(".")[1:]]
    audit = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    logs = caplog.text
    for secret in secrets:
        assert secret not in audit, "a secret in the audit trail"
        assert secret not in logs, "a secret in the logs"
        for answer in answers:
            assert secret not in answer, "a secret echoed in an answer"
    assert audit.count('"event":"request"') >= len(attempts) + 6 + 12
    assert "card_testing" in logs  # the anomaly alert was logged, without the secrets
