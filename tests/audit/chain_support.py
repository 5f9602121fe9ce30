"""Helpers for the chained audit tests: keys, a stepping clock, a sink, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dragoman.audit.chained import ChainedFileSink
from dragoman.audit.checkpoint import CheckpointSigner

DRAGOMAN = str(Path(sys.executable).with_name("dragoman"))


class StepClock:
    """1 second later at every call, from a fixed epoch: no test depends on the real time."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def make_key(directory: Path, name: str = "checkpoint") -> tuple[Path, Path]:
    """A fresh EC P-256 key: (private PEM, public PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def sink(path: Path, key: Path | None = None, **options: Any) -> ChainedFileSink:
    signer = None if key is None else CheckpointSigner.from_pem_file(key)
    return ChainedFileSink(path, signer=signer, clock=StepClock(), **options)


def request(n: int) -> dict[str, Any]:
    """A small request-like record."""
    return {
        "time": f"2026-01-01T00:00:{n % 60:02d}.000+00:00",
        "event": "request",
        "audit_id": f"a-{n}",
        "decision": "allow",
        "principal": "alice",
        "path": f"/v1/items/{n}",
    }


def write_log(path: Path, count: int, key: Path | None = None, **options: Any) -> None:
    audit = sink(path, key, **options)
    for n in range(count):
        audit.write(request(n))
    audit.close()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(path)]


def verify_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`dragoman audit verify ARGS` in a subprocess."""
    return subprocess.run(
        [DRAGOMAN, "audit", "verify", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
