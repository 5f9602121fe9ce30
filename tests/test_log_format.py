"""`dragoman serve --log-format json` (or DRAGOMAN_LOG_FORMAT=json): one JSON object per log
line, redacted like the text format, from the supervisor and from every worker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMethod

from dragoman.demo.runner import write_toml
from dragoman.logs import JsonFormatter, ParserRefusalFilter, RedactingFormatter
from serve_support import DRAGOMAN, free_port, serving, standalone_settings

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
CARD = "4111 1111 1111 1111"


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("dragoman.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_json_line_holds_time_level_pid_logger_and_message() -> None:
    line = json.loads(JsonFormatter().format(record("worker %d serving", 7)))
    assert set(line) == {"time", "level", "pid", "logger", "message"}
    assert line["message"] == "worker 7 serving"
    assert (line["level"], line["logger"], line["pid"]) == ("WARNING", "dragoman.test", os.getpid())
    assert line["time"].endswith("+00:00")


def test_json_message_is_redacted_after_its_arguments_are_filled_in() -> None:
    text = JsonFormatter().format(record("caller sent %s and card %s", JWT, CARD))
    assert JWT not in text and CARD not in text
    assert "[card]" in json.loads(text)["message"]


def test_json_exception_text_is_redacted() -> None:
    try:
        raise ValueError(f"upstream echoed Bearer {JWT} for {CARD}")
    except ValueError as exc:
        text = JsonFormatter().format(record("unexpected error", exc=exc))
    line = json.loads(text)
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert JWT not in text and CARD not in text


def test_json_line_is_one_line_even_with_a_traceback() -> None:
    try:
        raise RuntimeError("line one\nline two")
    except RuntimeError as exc:
        text = JsonFormatter().format(record("failed", exc=exc))
    assert "\n" not in text


def test_text_format_is_still_redacted() -> None:
    formatter = RedactingFormatter("%(levelname)s %(name)s: %(message)s")
    text = formatter.format(record("token %s card %s", JWT, CARD))
    assert JWT not in text and CARD not in text


# -- `dragoman serve` ---------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "dragoman.toml"
    write_toml(standalone_settings(tmp_path, free_port()), path)
    return path


def serve_lines(config: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `dragoman serve` until both workers say they serve, stop it; its log lines."""
    log = config.parent / "serve.log"
    with serving(config, log, *args, env=env, stdout_in_log=False) as process:
        while log.read_text("utf-8").count("serving on http://") < 2:
            assert process.poll() is None, log.read_text("utf-8")
            time.sleep(0.05)
    yield from log.read_text("utf-8").splitlines()


def parsed(lines: Iterator[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]  # every line, or the test fails here


@pytest.mark.slow
def test_serve_with_log_format_json_logs_only_json_objects_from_every_worker(
    config: Path,
) -> None:
    lines = parsed(serve_lines(config, "--log-format", "json"))
    serving = {line["pid"] for line in lines if line["message"].startswith("worker ")}
    assert len(serving) == 2  # both workers, each in its own process
    assert any(line["logger"] == "dragoman.keys.ring" for line in lines)  # the supervisor's


@pytest.mark.slow
def test_dragoman_log_format_in_the_environment_selects_json(config: Path) -> None:
    lines = parsed(serve_lines(config, env={"DRAGOMAN_LOG_FORMAT": "json"}))
    assert any("serving on http://" in line["message"] for line in lines)


def test_unknown_log_format_is_a_usage_error(config: Path) -> None:
    result = subprocess.run(
        [DRAGOMAN, "serve", "--config", str(config), "--log-format", "xml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in result.stderr


# -- line safety and aiohttp's parser refusals ------------------------------------------------


def test_a_json_log_line_is_one_ascii_line_whatever_the_message_holds() -> None:
    record = logging.LogRecord(
        "dragoman.test", logging.WARNING, __file__, 1, "got %s", ("a\u2028b\x85c\u00e9",), None
    )
    text = JsonFormatter().format(record)
    assert text.isascii()
    assert len(text.splitlines()) == 1
    assert json.loads(text)["message"] == "got a\u2028b\x85c\u00e9"


def test_parser_refusal_filter_does_not_raise_a_debug_record() -> None:
    refused = BadHttpMethod("\x16\x03\x01")
    record = logging.LogRecord(
        "aiohttp.server",
        logging.DEBUG,
        __file__,
        1,
        "Error handling request from %s",
        ("192.0.2.1",),
        (BadHttpMethod, refused, None),
    )
    assert ParserRefusalFilter().filter(record)
    assert record.levelno == logging.DEBUG


def test_an_uncaught_exception_is_logged_as_one_redacted_json_line() -> None:
    program = (
        "from dragoman.logs import configure\n"
        "configure('INFO', 'json')\n"
        f"raise ValueError('upstream said Bearer {JWT}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    logged = json.loads(line)
    assert (logged["level"], logged["logger"], logged["message"]) == (
        "ERROR",
        "dragoman.uncaught",
        "uncaught exception",
    )
    assert "ValueError: upstream said Bearer [token]" in logged["exception"]
    assert JWT not in result.stderr
