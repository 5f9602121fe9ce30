"""Audit log settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dragoman.settings.base import Duration, Section


class AuditSettings(Section):
    """The audit trail (SEMANTICS §8, docs/audit.md)."""

    sink: Literal["file", "stdout"] = Field("file", description="Where audit records go.")
    path: Path = Field(Path("var/audit.jsonl"), description="JSON-lines file of the file sink.")
    chain: bool = Field(
        True,
        description=(
            "Hash-chain the records (chain, seq, prev; `dragoman audit verify` checks them)."
            " The stdout sink keeps one chain per process."
        ),
    )
    max_bytes: int = Field(
        0,
        ge=0,
        description=(
            "Rotate the file sink's file once it reaches this size (0: never); the chain"
            " continues in the new file."
        ),
    )
    keep_rotated: int | None = Field(
        None,
        ge=0,
        description=(
            "Rotated files to keep, the newest by rotation time (unset: all; the spool grows"
            " until an operator prunes it). Without database_url the older ones are deleted"
            " after each rotation. With database_url the shipper deletes an older one only"
            " once the table holds every line of it: a file not yet shipped, or one that"
            " differs from the table, is never deleted. Needs max_bytes."
        ),
    )
    checkpoint_every: int = Field(
        1000,
        ge=0,
        description=(
            "With checkpoint_key_file, a signed checkpoint every this many records (0: only"
            " on rotation and close)."
        ),
    )
    checkpoint_key_file: Path | None = Field(
        None,
        description=(
            "EC P-256 private key (unencrypted PEM) that signs checkpoints; the verifier"
            " takes its public key. Unset: no checkpoints. Needs chain."
        ),
    )
    database_url: str | None = Field(
        None,
        description=(
            "Ship every record of the file sink, in seq order, into the append-only"
            " audit_records table of this database (postgresql+asyncpg://..., connected as a"
            " role with INSERT and SELECT only; sqlite+aiosqlite:// for one process)."
            " Unset: no shipping. Needs sink = file and chain; migrate it with `dragoman db"
            " upgrade`."
        ),
    )
    ship_batch: int = Field(
        500, ge=1, le=10000, description="Records shipped per database transaction."
    )
    ship_interval: Duration = Field(
        1.0, gt=0, le=3600, description="How often the shipper looks for new records."
    )
    ship_drain_timeout: Duration = Field(
        5.0,
        ge=0,
        le=300,
        description=(
            "At shutdown, longest wait for the shipper to ship what is left (the next start"
            " ships the rest)."
        ),
    )

    @field_validator("checkpoint_key_file")
    @classmethod
    def _checkpoint_key_file_readable(cls, value: Path | None) -> Path | None:
        from dragoman.audit.checkpoint import CheckpointKeyError, CheckpointSigner

        if value is not None:
            try:
                CheckpointSigner.from_pem_file(value)
            except CheckpointKeyError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _checkpoints_need_the_chain(self) -> AuditSettings:
        if self.checkpoint_key_file is not None and not self.chain:
            raise ValueError("checkpoint_key_file needs chain = true")
        return self

    @model_validator(mode="after")
    def _pruning_needs_rotation(self) -> AuditSettings:
        rotates = self.sink == "file" and self.chain and self.max_bytes > 0
        if self.keep_rotated is not None and not rotates:
            raise ValueError("keep_rotated needs sink = file, chain = true and max_bytes > 0")
        return self

    @field_validator("database_url")
    @classmethod
    def _shipping_driver(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite+aiosqlite://", "postgresql+asyncpg://")
        ):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _shipping_needs_the_chained_file(self) -> AuditSettings:
        if self.database_url is not None and (self.sink != "file" or not self.chain):
            raise ValueError("database_url needs sink = file and chain = true")
        return self
