"""What a running split reports: small events, one per step, for whoever shows progress.

:class:`~django_shards.resharding.runner.SplitRunner` and
:func:`~django_shards.resharding.runner.abort` call their ``report`` callable with these;
``shard_split`` turns them into lines. Each event holds data, never a sentence, so a
caller can count, time or log them as it likes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class PhaseRecorded:
    """The split recorded ``phase`` in its job: the work before it is done."""

    phase: str


@dataclass(frozen=True)
class CutOver:
    """The cutover is recorded: ``map_version`` routes the moved keys to the new shard,
    after ``frozen_seconds`` of refused writes to them (None: the freeze time is unknown)."""

    map_version: int
    frozen_seconds: float | None


@dataclass(frozen=True)
class LeaseWait:
    """Waiting ``seconds`` (one map lease and a margin) so that every process has seen
    the freeze (``before="copy"``), or no process still reads the moved keys on the source
    (``before="cleanup"``)."""

    seconds: float
    before: Literal["copy", "cleanup"]


@dataclass(frozen=True)
class CreatingTables:
    """Running ``migrate`` for the group's tables on the new shard's primary ``alias``."""

    alias: str


@dataclass(frozen=True)
class TablesCreated:
    """Tables that ``migrate`` had skipped, created on ``alias`` from the models."""

    alias: str
    tables: tuple[str, ...]


@dataclass(frozen=True)
class BatchCopied:
    """One batch of model ``label`` read on the source: ``rows`` moving rows copied so far,
    up to primary key ``after``."""

    label: str
    rows: int
    after: Any


@dataclass(frozen=True)
class CatchingUp:
    """One pass over the source's binlog (online split): applied up to GTID ``position``,
    ``applied`` transactions of moving rows written to the new shard in this pass; the
    source is ``behind`` transactions and about ``lag_seconds`` ahead."""

    position: str
    behind: int
    lag_seconds: float
    applied: int


@dataclass(frozen=True)
class StreamRestarted:
    """The binlog stream broke (``error``); it is read again from the last recorded GTID
    ``position``."""

    position: str
    error: str


@dataclass(frozen=True)
class FenceRetried:
    """A transaction opened on the source before the freeze outlived the fence's wait:
    the freeze was lifted, the catch-up goes on, and the fence is tried again
    (``attempt`` fences so far)."""

    attempt: int


@dataclass(frozen=True)
class TableVerified:
    """Model ``label`` checked: ``rows`` moving rows in ``batches`` batches (counts and
    checksums of each batch compared on both sides)."""

    label: str
    rows: int
    batches: int


@dataclass(frozen=True)
class BatchCleaned:
    """A batch of moved rows of model ``label`` deleted from the source: ``deleted`` so far."""

    label: str
    deleted: int


@dataclass(frozen=True)
class TargetNotEmptied:
    """After an abort, the rows already copied to the new shard could not be deleted:
    ``error`` says why. The abort itself stands (the new shard is not in the map)."""

    error: str
    while_running: bool  # True: noticed by a runner that found its split aborted


@dataclass(frozen=True)
class Aborted:
    """The split ``source`` -> ``target`` of ``group`` is aborted and forgotten."""

    group: str
    source: str
    target: str


SplitEvent = (
    PhaseRecorded
    | CutOver
    | LeaseWait
    | CreatingTables
    | TablesCreated
    | BatchCopied
    | CatchingUp
    | FenceRetried
    | StreamRestarted
    | TableVerified
    | BatchCleaned
    | TargetNotEmptied
    | Aborted
)
#: receives every event of a split as it happens
Report = Callable[[SplitEvent], None]
#: called with the name of each point a split reaches (see ``SplitRunner``); tests use it
#: to hold a split at a point
Hold = Callable[[str], None]


def ignore(event: SplitEvent) -> None:
    """A ``report`` that shows nothing."""
