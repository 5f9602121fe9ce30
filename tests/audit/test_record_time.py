"""The time an audit record carries: ISO 8601 in UTC to the millisecond, exactly as
``datetime.isoformat`` writes it (verifiers and SIEM parsers read it)."""

from __future__ import annotations

import math
import random
import threading
from datetime import UTC, datetime

from dragoman.audit.record import iso_time


def reference(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def test_record_time_is_the_isoformat_text_for_any_instant() -> None:
    draw = random.Random(7)
    for _ in range(50_000):
        epoch = draw.uniform(0, 4e9)
        assert iso_time(epoch) == reference(epoch), epoch


def test_record_time_at_the_edges_of_a_second_rounds_like_datetime() -> None:
    base = 1_764_547_200.0  # 2025-12-01T00:00:00Z
    edges = [
        base,
        base + 0.0000004,
        base + 0.0000005,
        base + 0.0009995,
        base + 0.9994999,
        base + 0.9995,
        base + 0.9999994,
        base + 0.9999995,
        math.nextafter(base + 1, 0),
        0.0,
        1e-7,
    ]
    for epoch in edges:
        assert iso_time(epoch) == reference(epoch), epoch


def test_record_time_follows_the_clock_back_and_forth_across_seconds() -> None:
    for epoch in (100.5, 101.2, 100.7, 5_000_000.25, 100.5):
        assert iso_time(epoch) == reference(epoch)


def test_threads_formatting_different_seconds_never_mix_their_texts() -> None:
    wrong: list[tuple[float, str]] = []

    def format_many(start: float) -> None:
        for step in range(20_000):
            epoch = start + step % 3
            text = iso_time(epoch)
            if text != reference(epoch):
                wrong.append((epoch, text))

    threads = [threading.Thread(target=format_many, args=(s,)) for s in (10.25, 7_000.5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
