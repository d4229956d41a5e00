"""Compare a lookup index with the rows it indexes, and repair it (``shard_lookup_rebuild``).

Two passes per lookup, each in batches of ``batch_size``, so memory stays bounded however
big the table:

1. **Orphans**: the index entries (``LookupEntry`` rows of the lookup on ``LOOKUP_ALIAS``),
   in primary-key order; each batch is checked against the rows of its keys, one query per
   shard (on its primary). An entry whose key has no row with its value is an orphan: left
   by a crash between an entry's write and its row's, or a row changed behind the ORM.
   An entry younger than :data:`~django_shards.lookup_index.IN_FLIGHT_SECONDS` may be a
   write in flight (its row not committed yet): it is looked at again once it is that old
   (``recent`` counts those), and only then counted or removed.
2. **Missing**: the rows of every owning shard (its primary, in primary-key order, only the
   rows it owns), each batch checked against the entries of its keys. A row value (not
   NULL) without its entry is missing: a lookup newly added to a model with rows (a
   backfill), rows written by raw SQL or with the index bypassed.

Values are compared as :func:`~django_shards.lookup_index.value_text` writes them, and the
database has the last word where its collation may say otherwise (MariaDB's
case-insensitive collations: an entry ``'a@x'`` covers a row ``'A@x'`` of the same key):
an entry is an orphan only if the shard finds no row of its key with its value
(:func:`~django_shards.lookup_index.row_has`), a row's entry is missing only if the
lookup alias finds no entry of its key with its value.

Repairs: an orphan is deleted right after :func:`~django_shards.lookup_index.row_has`
confirmed it (and claimed again if a row took the value meanwhile, as a release does); a
missing entry is written with :func:`~django_shards.lookup_index.claim`, which refuses a
cluster-unique value held by another key's row: that is a :class:`Conflict`, a duplicate
that needs a human, and the rest goes on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.apps import apps
from django.db import IntegrityError, models
from django.utils import timezone

from django_shards import lookup_index
from django_shards.lookup_index import Lookup, key_text, lookups_of, row_has, value_text
from django_shards.shardmap import get_map

#: rows or entries read per query
DEFAULT_BATCH_SIZE = 1000
#: examples of orphans and of missing entries kept per lookup
EXAMPLES = 10

#: ``step(doing)``: a context manager naming what its block does (a command's ``step``)
Step = Callable[[str], AbstractContextManager[None]]
#: ``progress(line)``: where progress goes (a command's stderr)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Conflict:
    """A cluster-unique value that a row of ``key`` has but another key's entry holds."""

    value: str
    key: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"value": self.value, "key": self.key, "reason": self.reason}


@dataclass
class LookupReport:
    """What one lookup's index looked like against its rows, and what was repaired."""

    lookup: Lookup
    repair: bool
    #: row values (not NULL) read, over every shard
    rows: int = 0
    #: index entries read
    entries: int = 0
    orphans: int = 0
    missing: int = 0
    #: entries without their row, younger than ORPHAN_GRACE_SECONDS: left alone
    recent: int = 0
    added: int = 0
    removed: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    #: (value, key) of the first orphans and missing entries found
    orphan_examples: list[tuple[str, str]] = field(default_factory=list)
    missing_examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``testapp.Member.email``."""
        return f"{self.lookup.sk.model._meta.label}.{self.lookup.name}"

    @property
    def clean(self) -> bool:
        """No orphan, no missing entry (``--check``); after a repair: no conflict left."""
        if self.repair:
            return not self.conflicts
        return not self.orphans and not self.missing

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "lookup": self.name,
            "unique": self.lookup.unique,
            "rows": self.rows,
            "entries": self.entries,
            "orphans": self.orphans,
            "missing": self.missing,
            "recent": self.recent,
            "orphan_examples": [{"value": v, "key": k} for v, k in self.orphan_examples],
            "missing_examples": [{"value": v, "key": k} for v, k in self.missing_examples],
        }
        if self.repair:
            data.update(
                added=self.added,
                removed=self.removed,
                conflicts=[c.as_dict() for c in self.conflicts],
            )
        return data


def models_with_lookups() -> list[type[models.Model]]:
    """The installed concrete models with at least one lookup, by label."""
    found = [m for m in apps.get_models() if not m._meta.proxy and lookups_of(m)]
    return sorted(found, key=lambda m: m._meta.label_lower)


def _no_step(doing: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def _no_progress(line: str) -> None:
    return None


def rebuild(
    lookup: Lookup,
    *,
    repair: bool,
    batch_size: int = DEFAULT_BATCH_SIZE,
    step: Step = _no_step,
    progress: Progress = _no_progress,
) -> LookupReport:
    """Compare ``lookup``'s entries with its rows; with ``repair``, fix the differences.

    Idempotent: run again, it finds nothing more to do (conflicts aside). Database errors
    propagate, inside ``step`` blocks that name the alias they were reading.
    """
    report = LookupReport(lookup, repair)
    _Pass(report, batch_size, step, progress).run()
    return report


class _Pass:
    """One lookup's two passes (orphans, then missing), sharing the report."""

    def __init__(self, report: LookupReport, batch_size: int, step: Step, progress: Progress):
        self.report = report
        self.lookup = report.lookup
        self.sk = report.lookup.sk
        self.manager = getattr(self.sk.model, self.sk.manager_name)
        self.batch_size = max(1, int(batch_size))
        self.step = step
        self.progress = progress
        self.db = lookup_index.alias()

    def run(self) -> None:
        self.find_orphans()
        self.find_missing()

    def entries(self) -> Any:
        from django_shards.models import LookupEntry

        return LookupEntry.objects.using(self.db).filter(
            model=self.lookup.label, field=self.lookup.name
        )

    # -- orphans: entries without their row ------------------------------------------

    def find_orphans(self) -> None:
        doing = f"read the index entries of {self.report.name} (alias {self.db})"
        after = None
        while True:
            with self.step(doing):
                qs = self.entries().order_by("pk")
                if after is not None:
                    qs = qs.filter(pk__gt=after)
                batch = list(qs.values_list("pk", "key", "value", "created")[: self.batch_size])
            if not batch:
                return
            self.report.entries += len(batch)
            self.check_entries(batch)
            self.progress(f"{self.report.name}: {self.report.entries} index entries read")
            if len(batch) < self.batch_size:
                return
            after = batch[-1][0]

    def check_entries(self, batch: list[tuple[Any, str, str, Any]]) -> None:
        """Count (and remove) the orphans among a batch of entries."""
        shard_map = get_map(self.sk.group)
        by_shard: dict[str, list[tuple[Any, str, str, Any]]] = {}
        unplaced = []
        for item in batch:
            try:
                shard = shard_map.shard_for_key(self.sk.normalize(item[1]))
            except Exception:  # noqa: BLE001 - no shard for the key, or a key of bad text
                unplaced.append(item)
                continue
            by_shard.setdefault(shard.name, []).append(item)
        candidates = list(unplaced)
        for name, items in by_shard.items():
            candidates.extend(self.without_rows(shard_map.shard_named(name), items))
        in_flight = timedelta(seconds=lookup_index.IN_FLIGHT_SECONDS)
        young = [c for c in candidates if c[3] is not None and c[3] > timezone.now() - in_flight]
        for pk, key, value, _created in candidates:
            if (pk, key, value, _created) not in young:
                self.orphan(pk, key, value)
        if young:
            # a write may still be between its entry and its row: look again once the
            # youngest is old enough for that write to have ended
            self.report.recent += len(young)
            wait = (max(c[3] for c in young) + in_flight - timezone.now()).total_seconds()
            time.sleep(max(wait, 0.0))
            again = list(self.without_rows_anywhere(young))
            for pk, key, value, _created in again:
                self.orphan(pk, key, value)

    def without_rows_anywhere(self, items: list[tuple[Any, str, str, Any]]) -> Iterator[Any]:
        """:meth:`without_rows` for entries of any shard's keys (or none's)."""
        for item in items:
            if not row_has(self.lookup, item[1], item[2]):
                yield item

    def without_rows(self, shard: Any, items: list[tuple[Any, str, str, Any]]) -> Iterator[Any]:
        """The entries among ``items`` (of keys on ``shard``) whose key has no row with
        their value, on the shard's primary."""
        keys = {self.sk.normalize(item[1]) for item in items}
        values = {item[2] for item in items}
        doing = f"read the rows of {self.report.name} on shard {shard.name!r} ({shard.primary})"
        with self.step(doing):
            rows = (
                self.manager.on_shard(shard.name)
                .strong()
                .filter(**{f"{self.sk.attname}__in": keys, f"{self.lookup.attname}__in": values})
                .values_list(self.sk.attname, self.lookup.attname)
            )
            present, keys_seen = set(), set()
            for key, value in rows:
                present.add((key_text(key), value_text(self.lookup.field, value)))
                keys_seen.add(key_text(key))
            for item in items:
                key = key_text(self.sk.normalize(item[1]))
                if (key, item[2]) in present:
                    continue
                # a row of the key matched under the column's collation ('A@x' for 'a@x')
                if key in keys_seen and row_has(self.lookup, item[1], item[2]):
                    continue
                yield item

    def orphan(self, pk: Any, key: str, value: str) -> None:
        report = self.report
        if not report.repair:
            self.found(report.orphan_examples, value, key)
            report.orphans += 1
            return
        doing = f"remove the orphan entry {value!r} -> {key} of {report.name}"
        with self.step(doing):
            if row_has(self.lookup, key, value):
                return  # a row has it now (written meanwhile): not an orphan
            self.found(report.orphan_examples, value, key)
            report.orphans += 1
            report.removed += self.entries().filter(pk=pk, key=key, value=value).delete()[0]
            if row_has(self.lookup, key, value):
                # a row took the value between the check and the delete (as release() does)
                self.add([(self.lookup, key, value)])

    # -- missing: rows without their entry --------------------------------------------

    def find_missing(self) -> None:
        shard_map = get_map(self.sk.group)
        for shard in shard_map.owning_shards:
            doing = f"read the rows of {self.report.name} on shard {shard.name!r} ({shard.primary})"
            read = 0
            for batch in self.row_batches(shard.name, doing):
                read += len(batch)
                self.check_rows(batch)
                self.progress(f"{self.report.name}: shard {shard.name}: {read} rows read")

    def row_batches(self, shard: str, doing: str) -> Iterator[list[tuple[Any, Any, Any]]]:
        """The shard's rows it owns with a value, as (pk, key, value), in pk batches."""
        qs = (
            self.manager.on_shard(shard)
            .strong()
            .filter(**{f"{self.lookup.attname}__isnull": False})
            .order_by("pk")
        )
        after = None
        while True:
            with self.step(doing):
                part = qs if after is None else qs.filter(pk__gt=after)
                batch = list(
                    part.values_list("pk", self.sk.attname, self.lookup.attname)[: self.batch_size]
                )
            if not batch:
                return
            yield batch
            if len(batch) < self.batch_size:
                return
            after = batch[-1][0]

    def check_rows(self, batch: list[tuple[Any, Any, Any]]) -> None:
        """Count (and write) the entries a batch of rows lacks."""
        wanted: dict[tuple[str, str], None] = {}
        for _pk, key, value in batch:
            text = value_text(self.lookup.field, value)
            if text is not None and key is not None:
                wanted[key_text(key), text] = None
        self.report.rows += len(wanted)
        if not wanted:
            return
        doing = f"read the index entries of {self.report.name} (alias {self.db})"
        with self.step(doing):
            held = set(
                self.entries()
                .filter(key__in={k for k, _ in wanted}, value__in={v for _, v in wanted})
                .values_list("key", "value")
            )
            keys_held = {k for k, _ in held}
            missing = [
                (key, value)
                for key, value in wanted
                if (key, value) not in held
                # an entry of the key matched under the collation ('a@x' for a row 'A@x')
                and not (key in keys_held and self.entries().filter(key=key, value=value).exists())
            ]
        for key, value in missing:
            self.found(self.report.missing_examples, value, key)
        self.report.missing += len(missing)
        if self.report.repair and missing:
            self.add([(self.lookup, key, value) for key, value in missing])

    def add(self, claims: list[lookup_index.Claim]) -> None:
        """Write the entries ``claims`` need; a cluster-unique value held by another key is
        a conflict, reported, and the others are written."""
        doing = f"write the missing index entries of {self.report.name} (alias {self.db})"
        with self.step(doing):
            try:
                lookup_index.claim(claims)
                self.report.added += len(claims)
                return
            except IntegrityError:
                pass  # all or nothing: one at a time, to find the conflicts
            for item in claims:
                try:
                    lookup_index.claim([item])
                except IntegrityError as exc:
                    reason = " ".join(str(exc).split())
                    self.report.conflicts.append(Conflict(item[2], item[1], reason))
                    continue
                self.report.added += 1

    @staticmethod
    def found(examples: list[tuple[str, str]], value: str, key: str) -> None:
        if len(examples) < EXAMPLES:
            examples.append((value, key))
