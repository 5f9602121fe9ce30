"""Several processes on one stdout pipe (the workers of `dragoman serve` under a container
runtime): the chained stdout sink's lock file keeps their lines whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dragoman.audit.stdout import LOCK_ENV
from dragoman.audit.verify import verify

LARGE_WRITER = """
from dragoman.audit.chained import ChainedStdoutSink
sink = ChainedStdoutSink()
for group in range(100):
    sink.write_many(
        [{"event": "request", "origin": "o" * 6000, "n": n, "group": group} for n in range(8)]
    )
sink.close()
"""


def test_processes_writing_large_records_to_one_pipe_write_whole_lines_and_every_chain_verifies(
    tmp_path: Path,
) -> None:
    env = {**os.environ, LOCK_ENV: str(tmp_path / "stdout.lock")}
    read, write = os.pipe()
    writers = [
        subprocess.Popen([sys.executable, "-c", LARGE_WRITER], stdout=write, env=env)
        for _ in range(4)
    ]
    os.close(write)
    captured = tmp_path / "stdout.jsonl"
    with os.fdopen(read, "rb") as pipe:
        captured.write_bytes(pipe.read())
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0, 0]
    lines = captured.read_bytes().splitlines()
    assert len(lines) == 4 * 100 * 8
    assert all(len(line) > 4096 for line in lines)
    chains = {json.loads(line)["chain"] for line in lines}  # every line a whole record
    assert len(chains) == 4
    for chain in chains:
        report = verify([captured], chain=chain)
        assert report.intact, report.summary()


PLAIN_WRITER = """
from dragoman.audit.sink import StdoutSink
sink = StdoutSink()
for group in range(100):
    sink.write_many([{"event": "request", "origin": "o" * 6000, "n": n} for n in range(8)])
sink.close()
"""


def test_processes_writing_large_unchained_records_to_one_pipe_write_whole_lines(
    tmp_path: Path,
) -> None:
    env = {**os.environ, LOCK_ENV: str(tmp_path / "stdout.lock")}
    read, write = os.pipe()
    writers = [
        subprocess.Popen([sys.executable, "-c", PLAIN_WRITER], stdout=write, env=env)
        for _ in range(4)
    ]
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        lines = pipe.read().splitlines()
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0, 0]
    assert len(lines) == 4 * 100 * 8
    assert all(json.loads(line)["origin"] == "o" * 6000 for line in lines)
