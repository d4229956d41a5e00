"""Running a split: prepare, copy, verify, cut over, clean up.

Every phase is recorded in the catalog's :class:`~django_shards.models.SplitJob` row, and
every phase's work can be repeated safely, so a split killed at any point (even
``kill -9``) continues with ``--resume``.

On MariaDB with an ``OPERATOR`` account the split runs **online**
(:mod:`django_shards.resharding.online`): copy from a snapshot while writes go on, catch up
from the binlog, a short fence, verification, cutover, clean-up. Elsewhere it keeps the
**frozen copy**, written here:

- **prepare**: a map version that knows the target as a pending shard (owning nothing),
  so ``migrate`` creates the group's tables on it; the target's replicas are checked.
- **freeze**: the moving keys are frozen in the catalog (writes to them raise
  ``ShardMoving``, everything else carries on); then one full lease is waited, so every
  process has seen the freeze before anything is copied.
- **copy**: each table in foreign-key order, in primary-key batches, multi-row
  ``INSERT IGNORE`` (idempotent); the last key copied is recorded after every batch.
- **verify**: row counts and checksums per batch on both sides; a mismatch stops the split
  with a report, lifts the freeze and cuts nothing over.
- **cutover**: one catalog transaction writes the new map version and lifts the freeze.
- **clean-up**: after one more lease (so no process still reads the source for those
  keys; online, the binlog is still applied meanwhile), the moved rows are deleted from the
  source in batches.

The runner tells what it does through its ``report`` callable, with the events of
:mod:`django_shards.resharding.progress`. Its ``hold`` callable, when given, is called with
the name of each point it reaches (tests hold a split there, or kill it there):

- each phase name, as the phase is recorded (``prepared``, ``frozen``, ``copying``,
  ``verified``, ``cut_over``, ``cleaned``, ``done``; online also ``catching_up``);
- ``target pending``: in prepare, after the map version that knows the target;
- ``freeze recorded``: when the freeze is written, before processes have seen it;
- ``copy <model label>`` and ``cleanup <model label>``: after a batch that wrote rows;
- ``copied``: the frozen copy's tables all copied, before verification;
- ``catching up``: online, after each pass over the binlog (its position recorded).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Literal

from django.core.management import call_command
from django.db import DatabaseError, connections, transaction
from django.db.models import QuerySet
from django.db.models.constants import OnConflict
from django.utils import timezone

from django_shards.conf import Shard, get_config
from django_shards.exceptions import SplitError
from django_shards.health import is_configured, probe
from django_shards.models import ShardMapVersion, SplitJob
from django_shards.resharding.online import OnlineSplit, online_available
from django_shards.resharding.plan import (
    SplitPlan,
    TableSpec,
    batch_checksum,
    group_tables,
    iter_rows,
)
from django_shards.resharding.progress import (
    Aborted,
    BatchCleaned,
    BatchCopied,
    CreatingTables,
    CutOver,
    Hold,
    LeaseWait,
    PhaseRecorded,
    Report,
    TablesCreated,
    TableVerified,
    TargetNotEmptied,
    ignore,
)
from django_shards.shardmap import ShardMap, get_map, registry, version_fields, write_version

Phase = SplitJob.Phase
#: seconds added to each lease wait, for clocks and in-flight statements
LEASE_MARGIN_SECONDS = 0.2
#: rows per batch when ``shard_split --batch-size`` is not given
DEFAULT_BATCH_SIZE = 1000


def _catalog() -> str:
    return get_config().catalog


def in_progress(job: SplitJob) -> SplitError:
    """The refusal of a split while ``job`` (of the same group) is active."""
    return SplitError(
        f"A split of group {job.group!r} is in progress ({job.source} -> {job.target}, "
        f"phase {job.phase}); finish it with --resume or undo it with --abort."
    )


def create_job(plan: SplitPlan) -> SplitJob:
    """Record a planned split. Refuses (``SplitError``) while another split of the group
    is active.

    Two splits recorded at once never both stay: each is inserted, then the group's other
    active splits are read with a lock, in one catalog transaction; one that finds another
    rolls back. On SQLite the second transaction waits for the first to end; on
    MySQL/MariaDB the two locking reads deadlock and the server fails one of them, which
    is then refused once the other is recorded.
    """
    catalog = _catalog()
    try:
        with transaction.atomic(using=catalog):
            job = SplitJob.objects.using(catalog).create(
                group=plan.group,
                source=plan.source,
                target=plan.target.name,
                target_primary=plan.target.primary,
                target_replicas=list(plan.target.replicas),
                at=plan.base.strategy.encode_split_point(plan.at),
                base_version=plan.base.version,
                new_shards=[s.as_dict() for s in plan.new_shards],
                new_layout=plan.new_layout.to_json(),
            )
            running = _active_jobs(plan.group).exclude(pk=job.pk).select_for_update().first()
            if running is not None:
                raise in_progress(running)  # and the insert is rolled back
            return job
    except DatabaseError:
        with transaction.atomic(using=catalog):
            running = active_job(plan.group, lock=True)  # waits for the other's commit
        if running is None:
            raise  # no split recorded meanwhile: the catalog itself failed
        raise in_progress(running) from None


def active_job(group: str, source: str | None = None, *, lock: bool = False) -> SplitJob | None:
    """The group's split in progress (of shard ``source``, if given), or None.

    ``lock``: inside a transaction, lock what is read (``SELECT ... FOR UPDATE`` where
    the catalog's backend has it) until the transaction ends.
    """
    qs = _active_jobs(group)
    if source is not None:
        qs = qs.filter(source=source)
    if lock:
        qs = qs.select_for_update()
    return qs.first()


def _active_jobs(group: str) -> QuerySet[SplitJob]:
    return SplitJob.objects.using(_catalog()).filter(group=group, phase__in=SplitJob.ACTIVE_PHASES)


class SplitRunner:
    """Drives one :class:`SplitJob` from its recorded phase to the end.

    ``report`` receives the split's progress events (default: none shown); ``hold``, when
    given, is called with the name of each point the split reaches (see the module's
    docstring) and may block there: tests hold a split at a point with it. ``mode``: a new
    split's copy, ``"online"`` or ``"frozen"`` (default: online wherever it can run); a
    split started keeps its mode.
    """

    def __init__(
        self,
        job: SplitJob,
        *,
        batch_size: int | None = None,
        report: Report = ignore,
        hold: Hold | None = None,
        mode: Literal["online", "frozen"] | None = None,
    ) -> None:
        self.job = job
        self.mode = mode
        #: rows per batch read, copied, verified or cleaned up
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        #: rows per statement of the online copy, if set (else as many as fit in
        #: ``upsert.COPY_STATEMENT_BYTES``)
        self.copy_batch_rows = batch_size
        self.report = report
        self.hold = hold
        self.group = job.group
        shard_map = get_map(job.group)
        self.strategy = shard_map.strategy
        self.new_layout = self.strategy.load_layout(job.new_layout)
        self.target = Shard(job.target, job.target_primary, tuple(job.target_replicas))
        self.tables = group_tables(job.group)
        # the source's primary: from the map the job started from (it never changes)
        self.source_alias = next(s["primary"] for s in job.new_shards if s["name"] == job.source)
        self.online = self._online_steps()

    def _online_steps(self) -> OnlineSplit | None:
        """The online phases, when this split runs online (MariaDB with an OPERATOR); None
        for the frozen copy. A split keeps the mode it started with."""
        mode = self.job.progress.get("mode")
        if mode is None and self.job.phase in (Phase.PLANNED, Phase.PREPARED):
            mode = self.mode or ("frozen" if online_available(self.source_alias) else "online")
        if mode != "online":
            return None
        reason = online_available(self.source_alias)
        if reason is not None:
            raise SplitError(
                f"The split {self.job.source} -> {self.job.target} started online, and now "
                f"cannot go on online: {reason}."
            )
        return OnlineSplit(self)

    # -- bookkeeping ---------------------------------------------------------------------

    def _save(self, **fields: Any) -> None:
        """Record ``fields`` on the job, only if it is still in the phase this runner holds:
        a split aborted (or advanced) by another process stops here."""
        expected = self.job.phase
        fields["updated"] = timezone.now()
        changed = (
            SplitJob.objects.using(_catalog())
            .filter(pk=self.job.pk, phase=expected)
            .update(**fields)
        )
        if not changed:
            current = SplitJob.objects.using(_catalog()).get(pk=self.job.pk)
            if current.phase == Phase.ABORTED:
                self._discard_target_rows()  # a batch this run copied after the abort
            raise SplitError(
                f"The split {self.job.source} -> {self.job.target} was changed elsewhere "
                f"(now phase {current.phase}, expected {expected}); this run stops."
            )
        for name, value in fields.items():
            setattr(self.job, name, value)

    def _advance(self, phase: str) -> None:
        self._save(phase=phase)
        self.report(PhaseRecorded(phase))

    def _reached(self, point: str) -> None:
        """The split is at ``point``: tell the ``hold`` hook, if there is one."""
        if self.hold is not None:
            self.hold(point)

    def moves(self, raw_key: Any, spec: TableSpec) -> bool:
        key = spec.key.normalize(raw_key)
        return self.strategy.shard_for_key(self.new_layout, key) == self.target.name

    @staticmethod
    def _lease_seconds() -> float:
        return get_config().map_lease_seconds + LEASE_MARGIN_SECONDS

    def _wait_lease(self, before: Literal["copy", "cleanup"]) -> None:
        seconds = self._lease_seconds()
        self.report(LeaseWait(seconds, before))
        if before == "cleanup" and self.online is not None:
            self.online.grace(seconds)  # the binlog is read until the clean-up starts
        else:
            time.sleep(seconds)

    # -- phases ----------------------------------------------------------------------------

    def run(self) -> SplitJob:
        steps: dict[str, Callable[[], None]] = {
            Phase.PLANNED: self.prepare,
            Phase.PREPARED: self.freeze,
            Phase.FROZEN: self.start_copy,
            Phase.COPYING: self.copy_and_verify,
            Phase.VERIFIED: self.cutover,
            Phase.CUT_OVER: self.cleanup,
            Phase.CLEANED: self.finish,
        }
        if self.online is not None:
            online = self.online
            fence = functools.partial(online.catch_up_and_fence, self._lease_seconds())
            steps |= {
                Phase.PREPARED: online.copy,
                Phase.COPYING: online.copy,
                Phase.CATCHING_UP: fence,
                Phase.FROZEN: fence,
            }
        while self.job.phase in steps:
            steps[self.job.phase]()
            self._reached(self.job.phase)
        return self.job

    def prepare(self) -> None:
        current = registry.refresh(self.group)
        if self.target.name not in current.shards:
            write_version(
                self.group,
                [*current.shards.values(), self.target],
                current.layout,
                note=f"split {self.job.source} -> {self.target.name}: target pending",
            )
        self._reached("target pending")
        self.report(CreatingTables(self.target.primary))
        call_command("migrate", database=self.target.primary, interactive=False, verbosity=0)
        self._create_missing_tables()
        mode = "frozen" if self.online is None else "online"
        self._save(progress={**self.job.progress, "mode": mode})
        for replica in self.target.replicas:
            health = probe(replica, "replica", wait=get_config().max_replica_lag_seconds)
            if not health.healthy:
                raise SplitError(
                    f"Replica {replica!r} of the new shard is not usable: {health.problem}."
                )
        self._advance(Phase.PREPARED)

    def _create_missing_tables(self) -> None:
        """Tables ``migrate`` skipped: an alias migrated before it joined the group has the
        migrations recorded as applied (the router had refused their operations)."""
        conn = connections[self.target.primary]
        with conn.cursor() as cursor:
            existing = set(conn.introspection.table_names(cursor))
        missing = [spec for spec in self.tables if spec.table not in existing]
        if missing:
            with conn.schema_editor() as editor:
                for spec in missing:
                    editor.create_model(spec.model)
            self.report(TablesCreated(self.target.primary, tuple(s.table for s in missing)))

    def _discard_target_rows(self) -> None:
        """Best effort: remove the rows of the group from the (pending, unused) target.
        A failure is reported, not raised: the abort already succeeded."""
        conn = connections[self.target.primary]
        try:
            with conn.cursor() as cursor:
                existing = set(conn.introspection.table_names(cursor))
                for spec in reversed(self.tables):
                    if spec.table in existing:
                        cursor.execute(f"DELETE FROM {conn.ops.quote_name(spec.table)}")
        except DatabaseError as exc:
            self.report(TargetNotEmptied(str(exc), while_running=True))

    def _empty_target(self) -> None:
        """Remove rows an earlier, failed copy left on the target (it serves nothing yet)."""
        conn = connections[self.target.primary]
        with conn.cursor() as cursor:
            for spec in reversed(self.tables):
                cursor.execute(f"DELETE FROM {conn.ops.quote_name(spec.table)}")
        self._save(progress={"mode": self.job.progress.get("mode")})

    def freeze(self) -> None:
        if self.job.progress.get("dirty"):  # a failed verification: copy afresh
            self._empty_target()
        self._save(frozen=True, progress={**self.job.progress, "frozen_at": time.time()})
        self._reached("freeze recorded")
        self._wait_lease("copy")
        self._advance(Phase.FROZEN)

    def start_copy(self) -> None:
        self._advance(Phase.COPYING)

    def copy_and_verify(self) -> None:
        self.copy()
        self._reached("copied")
        self.verify()

    def copy(self) -> None:
        conn = connections[self.target.primary]
        q = conn.ops.quote_name
        for spec in self.tables:
            done = self.job.progress.get("copy", {}).get(spec.label, {})
            after, copied = done.get("after"), done.get("rows", 0)
            if done.get("complete"):
                continue
            insert = (
                f"{conn.ops.insert_statement(on_conflict=OnConflict.IGNORE)} {q(spec.table)} "
                f"({', '.join(q(c) for c in spec.columns)}) VALUES "
                f"({', '.join(['%s'] * len(spec.columns))})"
            )
            pk_index = spec.columns.index(spec.pk_column)
            started = time.monotonic()
            for rows in iter_rows(self.source_alias, spec, self.batch_size, after=after):
                moving = [r for r in rows if self.moves(r[spec.key_index], spec)]
                if moving:
                    with transaction.atomic(using=self.target.primary), conn.cursor() as cursor:
                        cursor.executemany(insert, moving)
                copied += len(moving)
                after = rows[-1][pk_index]
                self._record_copy(spec.label, after=after, rows=copied)
                self.report(BatchCopied(spec.label, copied, after))
                if moving:
                    self._reached(f"copy {spec.label}")
            elapsed = time.monotonic() - started
            self._record_copy(spec.label, after=after, rows=copied, complete=True, seconds=elapsed)

    def _record_copy(self, label: str, **state: Any) -> None:
        progress = dict(self.job.progress)
        copies = dict(progress.get("copy", {}))
        copies[label] = {**copies.get(label, {}), **state}
        progress["copy"] = copies
        self._save(progress=progress)

    def verify(self) -> None:
        mismatches = []
        for spec in self.tables:
            pk_index = spec.columns.index(spec.pk_column)
            batches = rows_total = 0
            source_batches = iter_rows(self.source_alias, spec, self.batch_size)
            previous = None
            for rows in source_batches:
                moving = [r for r in rows if self.moves(r[spec.key_index], spec)]
                upto = rows[-1][pk_index]
                target_rows = [
                    r
                    for batch in iter_rows(
                        self.target.primary, spec, max(len(rows), 1), after=previous, upto=upto
                    )
                    for r in batch
                ]
                previous = upto
                batches += 1
                rows_total += len(moving)
                if len(moving) != len(target_rows) or batch_checksum(moving) != batch_checksum(
                    target_rows
                ):
                    mismatches.append(
                        f"{spec.label}: batch up to pk {upto}: source {len(moving)} rows, "
                        f"target {len(target_rows)} rows, checksums differ"
                        if len(moving) == len(target_rows)
                        else f"{spec.label}: batch up to pk {upto}: source {len(moving)} rows, "
                        f"target {len(target_rows)} rows"
                    )
            # rows on the target beyond the source's last key
            extra = sum(
                len(b)
                for b in iter_rows(self.target.primary, spec, self.batch_size, after=previous)
            )
            if extra:
                mismatches.append(f"{spec.label}: {extra} rows on the target that the source lacks")
            self.report(TableVerified(spec.label, rows_total, batches))
        if mismatches:
            progress = {**self.job.progress, "dirty": True, "verify": mismatches}
            self._save(
                frozen=False, phase=Phase.PREPARED, progress=progress, error="; ".join(mismatches)
            )
            raise SplitError(
                "Verification failed, nothing was cut over and the freeze is lifted:\n  "
                + "\n  ".join(mismatches)
                + "\nRun again with --resume to copy afresh, or --abort."
            )
        self._advance(Phase.VERIFIED)

    def cutover(self) -> None:
        catalog = _catalog()
        with transaction.atomic(using=catalog):
            job = SplitJob.objects.using(catalog).select_for_update().get(pk=self.job.pk)
            if job.phase != Phase.VERIFIED:  # another runner got here first
                self.job = job
                return
            current = registry.refresh(self.group)
            shards = [Shard.from_dict(s) for s in self.job.new_shards]
            frozen_at = self.job.progress.get("frozen_at")
            progress = {
                **self.job.progress,
                "frozen_seconds": None if frozen_at is None else time.time() - frozen_at,
            }
            new_map = ShardMap(
                group=self.group,
                version=current.version + 1,
                strategy=current.strategy,  # a split never changes the strategy
                layout=self.new_layout,
                shards={s.name: s for s in shards},
            )
            ShardMapVersion.objects.using(catalog).create(
                **version_fields(new_map), note=f"split {self.job.source} -> {self.target.name}"
            )
            self._save(phase=Phase.CUT_OVER, frozen=False, progress=progress, error="")
        registry.reset_group(self.group)
        self.report(CutOver(new_map.version, progress["frozen_seconds"]))

    def cleanup(self) -> None:
        if not self.job.progress.get("cleanup_waited"):
            self._wait_lease("cleanup")
            self._save(progress={**self.job.progress, "cleanup_waited": True})
        conn = connections[self.source_alias]
        q = conn.ops.quote_name
        for spec in reversed(self.tables):  # children before parents
            pk_index = spec.columns.index(spec.pk_column)
            deleted = self.job.progress.get("cleanup", {}).get(spec.label, 0)
            for rows in iter_rows(self.source_alias, spec, self.batch_size):
                pks = [r[pk_index] for r in rows if self.moves(r[spec.key_index], spec)]
                if pks:
                    with conn.cursor() as cursor:
                        cursor.execute(
                            f"DELETE FROM {q(spec.table)} WHERE {q(spec.pk_column)} IN "
                            f"({', '.join(['%s'] * len(pks))})",
                            pks,
                        )
                    deleted += len(pks)
                    cleanup = {**self.job.progress.get("cleanup", {}), spec.label: deleted}
                    self._save(progress={**self.job.progress, "cleanup": cleanup})
                    self.report(BatchCleaned(spec.label, deleted))
                    self._reached(f"cleanup {spec.label}")
        self._advance(Phase.CLEANED)

    def finish(self) -> None:
        """Record ``done``, once the source's replicas have applied the clean-up (at most
        MAX_REPLICA_LAG_SECONDS each): ``done`` ends the fan-outs' ownership filter on the
        source, and an eventual fan-out reading a replica that still had the moved rows
        would count them twice. A replica that does not catch up in time is only lagging,
        as any lagging replica: the routing's lag checks then keep reads off it."""
        source: dict[str, Any] = next(
            (s for s in self.job.new_shards if s["name"] == self.job.source), {}
        )
        for replica in source.get("replicas", []):
            if is_configured(replica):
                probe(replica, "replica", wait=get_config().max_replica_lag_seconds)
        self._advance(Phase.DONE)


def abort(job: SplitJob, report: Report = ignore) -> SplitJob:
    """Undo a split that has not cut over: lift the freeze, empty the target, forget it.

    The phase changes to ``aborted`` in one conditional update, so a runner still working
    on the split elsewhere stops at its next step, and a cutover cannot slip in between.
    """
    catalog = _catalog()
    with transaction.atomic(using=catalog):
        changed = (
            SplitJob.objects.using(catalog)
            .filter(pk=job.pk, phase__in=SplitJob.BEFORE_CUTOVER)
            .update(phase=Phase.ABORTED, frozen=False, updated=timezone.now())
        )
    if not changed:
        job.refresh_from_db(using=catalog)
        raise SplitError(
            f"The split {job.source} -> {job.target} of group {job.group!r} has already cut "
            f"over (phase {job.phase}); it cannot be aborted. Finish it with --resume."
        )
    registry.reset_group(job.group)
    current = registry.refresh(job.group)
    if job.target in current.shards:
        target = current.shards[job.target]
        conn = connections[target.primary]
        try:
            with conn.cursor() as cursor:
                for spec in reversed(group_tables(job.group)):
                    cursor.execute(f"DELETE FROM {conn.ops.quote_name(spec.table)}")
        except DatabaseError as exc:  # the tables may not exist yet: reported, the abort goes on
            report(TargetNotEmptied(str(exc), while_running=False))
        write_version(
            job.group,
            [s for s in current.shards.values() if s.name != job.target],
            current.layout,
            note=f"split {job.source} -> {job.target} aborted",
        )
    job.refresh_from_db(using=catalog)
    report(Aborted(job.group, job.source, job.target))
    return job
