"""Redaction: tokens, secrets and card numbers never reach an audit record or a log line."""

from __future__ import annotations

import pytest

from dragoman.audit.redact import luhn_valid, redact, redact_text

JWT = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJjdXNfYWxpY2UifQ."
    "rfB1ExzfSx06wd829jO0yHYtmWG37iZfRh-LzOR_qJk1dBtatYyCY4tymq"
)


@pytest.mark.parametrize(
    "card",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "378282246310005",
        "6011111111111117",
        "4222222222222",
    ],
)
def test_luhn_valid_card_numbers_are_redacted(card: str) -> None:
    assert redact_text(f"pay with {card} now") == "pay with [card] now"


@pytest.mark.parametrize(
    "digits", ["4111111111111112", "1234567890123", "20261129123456", "12345678"]
)
def test_digit_runs_that_are_not_card_numbers_are_kept(digits: str) -> None:
    assert redact_text(f"id {digits}") == f"id {digits}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111111111111111 123", "card [card] 123"),  # a CVV after it
        ("qty 2 4111111111111111", "qty 2 [card]"),  # a number before it
        ("exp 12/25 4111111111111111", "exp 12/25 [card]"),
        ("4111 1111 1111 1111 5", "[card] 5"),
        ("1 2 3 4111 1111 1111 1111 9 9", "1 2 3 [card] 9 9"),
        ("card=4111+1111+1111+1111", "card=[card]"),  # form-encoded spaces
        ("4111  1111  1111  1111", "[card]"),
        ("4111\t1111\t1111\t1111", "[card]"),
        ("4111\u00a01111\u00a01111\u00a01111", "[card]"),
        ("1 4111111111111111 5555555555554444 2", "1 [card] [card] 2"),
    ],
)
def test_a_card_number_among_other_digit_groups_is_redacted(text: str, expected: str) -> None:
    """The whole run of groups failed the Luhn check, and was kept whole, card included."""
    assert redact_text(text) == expected


def test_luhn_check() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_jwts_are_redacted_wherever_they_appear() -> None:
    assert redact_text(f"/v1/x?token={JWT}&a=1") == "/v1/x?token=[redacted]&a=1"
    assert redact_text(f"got {JWT} here") == "got [token] here"


def test_bearer_and_basic_credentials_are_redacted() -> None:
    assert redact_text("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer [redacted]"
    assert redact_text("basic Zm9vOmJhcg==") == "basic [redacted]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("?access_token=abc123&x=1", "?access_token=[redacted]&x=1"),
        ("password=hunter2", "password=[redacted]"),
        ("api_key: sk_live_123", "api_key: [redacted]"),
        ("X-Amz-Signature=deadbeef", "X-Amz-Signature=[redacted]"),
        ("csrf_token=abc", "csrf_token=[redacted]"),
        ("auth_token=s3cr3tvalue", "auth_token=[redacted]"),
        ("db_password=hunter2", "db_password=[redacted]"),
        ("secret_key=s3cr3t", "secret_key=[redacted]"),
        ("private-key: abc", "private-key: [redacted]"),
        (
            '{"password": "hunter2", "client_secret": "abc"}',
            '{"password": "[redacted]", "client_secret": "[redacted]"}',
        ),
        ("x-amz-security-token=IQoJb3", "x-amz-security-token=[redacted]"),
    ],
)
def test_secret_named_parameters_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_a_dict_member_named_like_a_secret_is_redacted() -> None:
    assert redact({"password": "hunter2", "db_token": "abc", "tokens": 3, "note": "hi"}) == {
        "password": "[redacted]",
        "db_token": "[redacted]",
        "tokens": 3,
        "note": "hi",
    }


def test_redact_walks_nested_structures() -> None:
    record = {"path": f"/x?access_token={JWT}", "list": ["4111111111111111", 3], "n": None}
    assert redact(record) == {
        "path": "/x?access_token=[redacted]",
        "list": ["[card]", 3],
        "n": None,
    }


def test_dragomans_own_identifiers_are_never_redacted() -> None:
    from dragoman.audit.sink import encode

    luhn_valid_id = "4111-1111-1111-1111"
    written = encode({"audit_id": luhn_valid_id, "jti": luhn_valid_id, "path": luhn_valid_id})
    assert b'"audit_id":"4111-1111-1111-1111"' in written
    assert b'"jti":"4111-1111-1111-1111"' in written
    assert b'"path":"[card]"' in written


@pytest.mark.parametrize(
    "identifier",
    [
        "2557cb12-4974-4810-9441-f6aaf7267324",
        "12345678-4111-1111-1111-111111111111",
        "cus_4111111111111111x",
        "ord-4111111111111111-b",
    ],
)
def test_luhn_valid_runs_inside_identifiers_are_kept(identifier: str) -> None:
    assert redact_text(f"mapping {identifier} drifted") == f"mapping {identifier} drifted"


@pytest.mark.parametrize(
    "text", ["card=4111111111111111", "(4111 1111 1111 1111)", "pan_4111111111111111"]
)
def test_card_numbers_next_to_punctuation_are_redacted(text: str) -> None:
    assert "4111" not in redact_text(text)


def test_csrf_tokens_are_redacted_wherever_they_appear() -> None:
    from dragoman.browser.csrf import CsrfTokens, random_id

    token = CsrfTokens(b"k" * 32).token(random_id(), random_id())
    for text in (token, f"header {token} again", f"csrf={token}", f"[{token}]"):
        redacted = redact_text(text)
        assert token not in redacted
        assert token.split(".")[1] not in redacted


@pytest.mark.parametrize(
    "text",
    [
        "X-CSRF-Token: abcdef",
        "Cookie: __Host-dragoman-csrf=abcdef",
        "set-cookie=abcdef",
        "__Host-dragoman-csrf=abcdef",
    ],
)
def test_csrf_headers_and_cookies_are_redacted(text: str) -> None:
    assert "abcdef" not in redact_text(text)


def test_ids_dragoman_makes_pass_unchanged_exactly_as_the_patterns_would_leave_them() -> None:
    """Request ids (32 hex digits) and UUIDs skip the patterns (each is new, so caching them
    would only push out values that recur); the patterns leave every such id unchanged."""
    import random
    import uuid

    from dragoman.audit.redact import _redact

    chooser = random.Random(7)
    ids = [f"{chooser.getrandbits(128):032x}" for _ in range(2000)]
    ids += [str(uuid.UUID(int=chooser.getrandbits(128))) for _ in range(2000)]
    ids += ["0" * 32, "1234567890123456" * 2, "4242424242424242" + "0" * 16]
    ids += ["42424242-4242-4242-4242-424242424242"]
    for text in ids:
        assert _redact(text) == text, text
        assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424242",  # a card number alone: 16 digits, no id shape
        "4242 4242 4242 4242",
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "token=0123456789abcdef0123456789abcdef",
    ],
)
def test_values_near_the_id_shapes_are_still_redacted(text: str) -> None:
    assert redact_text(text) != text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/v1/payment-methods/4111%201111%201111%201111", "/v1/payment-methods/[card]"),
        ("/v1/payment-methods/4111%2D1111%2d1111-1111/x", "/v1/payment-methods/[card]/x"),
        ("/v1/payment-methods/%204111%201111%201111%201111", "/v1/payment-methods/ [card]"),
        ("/v1/payment-methods/%34%31%31%31111111111111", "/v1/payment-methods/[card]"),
        ("/pm/4111%25201111%25201111%25201111", "/pm/[card]"),
        ("/cb?access_token%3Dsecret", "/cb?access_token=[redacted]"),
    ],
)
def test_percent_encoded_secrets_and_card_numbers_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_percent_encoded_text_with_nothing_to_redact_keeps_its_encoding() -> None:
    path = "/v1/customers/cus_a/notes/a%20b%2Fc"
    assert redact_text(path) == path


def test_a_percent_encoded_jwt_is_redacted() -> None:
    encoded = JWT.replace(".", "%2E")
    assert redact_text(f"/cb/{encoded}") == "/cb/[token]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "{'password': 'hunter2', 'client_secret': 's3cr3t'}",
            "{'password': '[redacted]', 'client_secret': '[redacted]'}",
        ),
        ("api_key: 'k-123'", "api_key: '[redacted]'"),
    ],
    ids=["python-repr", "single-quoted"],
)
def test_single_quoted_secret_values_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_a_quoted_secret_value_is_redacted_whole_spaces_included() -> None:
    text = '{"password": "correct horse battery staple"}'
    assert redact_text(text) == '{"password": "[redacted]"}'


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:supersecret@redis:6379/0", "redis://:[redacted]@redis:6379/0"),
        ("postgresql://app:pw-123@db:5432/x", "postgresql://app:[redacted]@db:5432/x"),
    ],
)
def test_the_password_of_a_url_is_redacted(url: str, expected: str) -> None:
    assert redact_text(f"cannot reach {url}") == f"cannot reach {expected}"


@pytest.mark.parametrize("card", ["4111.1111.1111.1111", "4111_1111_1111_1111"])
def test_card_numbers_grouped_by_dots_or_underscores_are_redacted(card: str) -> None:
    assert redact_text(f"card {card} declined") == "card [card] declined"


@pytest.mark.parametrize("text", ["version 1.2.3.4", "at 1733212345.123456", "1234.5678.9012.3456"])
def test_dotted_numbers_that_are_not_cards_are_kept(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('connect failed: password="s3cr3t', 'connect failed: password="[redacted]'),
        ('cookie="sessid=abc123', 'cookie="[redacted]'),
        ("{'token': 'abc", "{'token': '[redacted]"),
    ],
    ids=["double", "cookie", "single"],
)
def test_a_quoted_secret_value_cut_short_is_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_a_quoted_secret_value_with_escaped_quotes_is_redacted_whole() -> None:
    text = r'{"password": "ab\"cd efg", "n": 1}'
    assert redact_text(text) == '{"password": "[redacted]", "n": 1}'
