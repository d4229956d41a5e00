"""The online split's phases on MariaDB: copy from a snapshot, catch up, fence, verify.

The moving keys stay writable while their rows are copied and the source's binlog is
applied to the new shard; they are frozen only for the final catch-up and the cutover:

- **copying**: the source is read inside ``START TRANSACTION WITH CONSISTENT SNAPSHOT``
  (the ``OPERATOR`` account), whose GTID is recorded in the job *before* anything is
  copied. Only the moving rows are selected (``Strategy.ownership_q`` turned into SQL),
  in primary-key batches, and upserted into the new shard. A copy resumed after a crash
  reads a fresh snapshot from the last key copied: the binlog is replayed from the first
  snapshot's GTID, so rows copied from either snapshot end up right.
- **catching_up**: the binlog is applied from the recorded GTID, one target transaction
  per source transaction (:class:`~django_shards.resharding.stream.ChangeStream`), and
  the last applied GTID is recorded. Every process re-reads the map every
  ``FENCE_POLL_SECONDS`` while the split is here (after one full lease, so all have
  noticed). Once the lag is small, the moving rows are verified once in full against a
  snapshot, with the stream stopped exactly at that snapshot's GTID.
- **frozen**: the freeze is recorded; after ``FENCE_POLL_SECONDS`` and a margin every
  process refuses writes to the moving keys, and the transactions that were open on the
  source before then are waited for (a long one lifts the freeze and the fence is tried
  again later, so the fence stays short).
- **verified**: the stream is drained to a last snapshot's GTID, and only the rows the
  binlog touched since the full verification are compared again.

After the cutover (runner's), the stream is read for one more lease before the clean-up,
so a write that passed the freeze check a moment before the freeze and committed late
still reaches the new shard.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections

from django_shards import shardmap
from django_shards.conf import get_config
from django_shards.exceptions import SplitError
from django_shards.models import SplitJob
from django_shards.resharding.plan import TableSpec, batch_checksum, pk_range_sql
from django_shards.resharding.progress import (
    BatchCopied,
    CatchingUp,
    FenceRetried,
    PhaseRecorded,
    StreamRestarted,
    TableVerified,
)
from django_shards.resharding.upsert import COPY_WRITERS, BatchWriters, row_literal_sql

if TYPE_CHECKING:
    from django_shards.resharding.runner import SplitRunner

Phase = SplitJob.Phase
logger = logging.getLogger("django_shards")
#: the fence starts after a pass over the binlog that took less than this (seconds): the
#: final drain inside the fence then has about that much binlog to read. (The source's
#: GTID counts every transaction of its server, other schemas' too, so a count of
#: transactions behind says little about the group's own backlog.)
FENCE_PASS_SECONDS = 0.25
#: seconds added to FENCE_POLL_SECONDS before the freeze counts as seen by every process
FENCE_MARGIN_SECONDS = 0.1
#: the longest a transaction opened before the freeze is waited for, inside the fence
FENCE_TRANSACTION_WAIT_SECONDS = 0.3
#: how often a fence is retried (a long transaction on the source) before the split fails
FENCE_ATTEMPTS = 20
#: MySQL error codes of a missing privilege (the operator account without PROCESS)
ACCESS_DENIED = (1044, 1142, 1227)
#: consecutive failures of the binlog stream after which the split stops (resumable)
STREAM_ATTEMPTS = 5
#: the least time between two records of the applied GTID in the job
RECORD_EVERY_SECONDS = 0.2


def online_available(source_alias: str) -> str | None:
    """None when a split from ``source_alias`` can run online; else why it cannot."""
    conn = connections[source_alias]
    if conn.vendor != "mysql" or not getattr(conn, "mysql_is_mariadb", False):
        return f"{conn.display_name} has no change stream the split can read"
    if get_config().operator is None:
        return 'DJANGO_SHARDS["OPERATOR"] is not set (the account that reads the binlog)'
    return None


def pymysql_errors() -> tuple[type[Exception], ...]:
    """The base errors of PyMySQL (the binlog reader's driver) and of mysqlclient (the
    operator's connections)."""
    import MySQLdb
    import pymysql

    return (pymysql.err.Error, MySQLdb.Error)


class OnlineSplit:
    """The online phases of one split, run by its :class:`SplitRunner`."""

    def __init__(self, runner: SplitRunner) -> None:
        from django_shards.resharding.stream import ChangeStream

        self.runner = runner
        self.job = runner.job
        self.tables = runner.tables
        self.source = runner.source_alias
        self.target = runner.target.primary
        self.stream = ChangeStream(
            self.source,
            self.target,
            self.tables,
            lambda spec, row: runner.moves(row[spec.key_index], spec),
            server_id=self._server_id(),
        )
        #: (label, pk) the binlog touched since the last full verification (None: none yet)
        self.touched: set[tuple[str, Any]] | None = None
        self._recorded_at = 0.0

    def _server_id(self) -> int:
        # above every server id of a real topology; one per job and process
        return 2_000_000_000 + (self.job.pk % 100_000) * 1000 + os.getpid() % 1000

    @property
    def gtid(self) -> str:
        return str(self.job.progress["gtid"])

    # -- copying ---------------------------------------------------------------------------

    def copy(self) -> None:
        """From ``prepared`` (a fresh copy) or ``copying`` (resumed) to ``catching_up``."""
        from django_shards.resharding.stream import snapshot

        runner = self.runner
        with snapshot(self.source) as (source_conn, gtid):
            if self.job.phase != Phase.COPYING:
                if self.job.progress.get("dirty"):  # a failed verification: copy afresh
                    runner._empty_target()
                progress = {
                    "mode": "online",
                    "gtid": gtid,
                    "snapshot_gtid": gtid,
                    "copy": {},
                    # the position was the source's own just now: the lag grows from here
                    "catch_up": {"at": time.time(), "lag_seconds": 0.0},
                }
                runner._save(phase=Phase.COPYING, progress=progress)
                runner.report(PhaseRecorded(Phase.COPYING))
                runner._reached(Phase.COPYING)
            for spec in self.tables:
                self._copy_table(source_conn, spec)
        runner._save(
            phase=Phase.CATCHING_UP,
            progress={**self.job.progress, "catching_up_at": time.time()},
        )
        runner.report(PhaseRecorded(Phase.CATCHING_UP))

    def _moving(self, spec: TableSpec, after: Any) -> Any:
        """The source's moving rows of ``spec`` after pk ``after``, in pk order."""
        qs = spec.model._base_manager.using(self.source)
        owned = self._owned_q(spec)
        if owned is not None:
            qs = qs.filter(owned)
        if after is not None:
            qs = qs.filter(pk__gt=after)
        return qs.order_by("pk")

    def _select_moving(self, spec: TableSpec, after: Any, limit: int) -> tuple[str, list[Any]]:
        """SQL selecting the next ``limit`` moving rows of ``spec`` after pk ``after``."""
        attnames = [f.attname for f in spec.model._meta.concrete_fields]
        qs = self._moving(spec, after).values_list(*attnames)[:limit]
        sql, params = qs.query.get_compiler(using=self.source).as_sql()
        return sql, list(params)

    def _select_literals(self, spec: TableSpec, after: Any, row_sql: str) -> tuple[str, list[Any]]:
        """SQL selecting ``(pk, key, row literal)`` of every moving row of ``spec`` after pk
        ``after``, in pk order (``row_sql`` from ``upsert.row_literal_sql``)."""
        from django.db.models import BinaryField
        from django.db.models.expressions import RawSQL

        row = RawSQL(row_sql, (), output_field=BinaryField())
        qs = self._moving(spec, after).values_list("pk", spec.key.attname, row)
        sql, params = qs.query.get_compiler(using=self.source).as_sql()
        return sql, list(params)

    def _copy_table(self, source_conn: Any, spec: TableSpec) -> None:
        """Copy ``spec``'s moving rows after the last recorded key. The source renders each
        row as its ``VALUES`` literal (``upsert.row_literal_sql``: no Python value is made
        of a column) and streams them in pk order; a batch of them is one upsert on one of
        COPY_WRITERS connections of the app's user, written while the next is read (the
        driver releases the GIL while the servers work). The key recorded is the last of a
        batch all of whose predecessors are written, so a resumed copy never skips a row."""
        from MySQLdb.cursors import SSCursor

        runner = self.runner
        done = self.job.progress.get("copy", {}).get(spec.label, {})
        if done.get("complete"):
            return
        after, copied = done.get("after"), done.get("rows", 0)
        owned_in_sql = self._owned_q(spec) is not None
        started = time.monotonic()
        with source_conn.cursor() as cursor:  # the session's, not the snapshot's, setting
            cursor.execute("SET SESSION time_zone = '+00:00'")
        sql, params = self._select_literals(spec, after, row_literal_sql(source_conn, spec))
        with BatchWriters(self.target, spec) as writers:
            in_flight: collections.deque[tuple[Future[None], Any, int]] = collections.deque()

            def settle_oldest() -> None:
                nonlocal copied
                future, last, count = in_flight.popleft()
                future.result()
                copied += count
                runner._record_copy(spec.label, after=last, rows=copied)
                runner.report(BatchCopied(spec.label, copied, last))
                if count:
                    runner._reached(f"copy {spec.label}")

            def submit(batch: list[bytes], last: Any) -> None:
                in_flight.append((writers.submit(b",".join(batch)), last, len(batch)))
                while len(in_flight) > COPY_WRITERS:
                    settle_oldest()

            cursor = source_conn.cursor(SSCursor)  # streamed: no more than a batch in memory
            try:
                cursor.execute(sql, params)
                batch: list[bytes] = []
                size = 0
                while rows := cursor.fetchmany(runner.batch_size):
                    for pk, key, literal in rows:
                        if not owned_in_sql and not runner.moves(key, spec):
                            continue
                        if batch and (
                            len(batch) == runner.copy_batch_rows
                            or size + len(literal) > writers.max_batch_bytes
                        ):
                            submit(batch, after)
                            batch, size = [], 0
                        batch.append(literal)
                        size += len(literal) + 1
                        after = pk
                if batch:
                    submit(batch, after)
            finally:
                cursor.close()
            while in_flight:
                settle_oldest()
        elapsed = time.monotonic() - started
        runner._record_copy(spec.label, after=after, rows=copied, complete=True, seconds=elapsed)

    def _owned_q(self, spec: TableSpec) -> Any:
        runner = self.runner
        return runner.strategy.ownership_q(runner.new_layout, runner.target.name, spec.key.attname)

    # -- catching up -----------------------------------------------------------------------

    def _record(self, position: str, *, force: bool = False, **extra: Any) -> None:
        """Record the applied position (at most every RECORD_EVERY_SECONDS unless forced)."""
        now = time.monotonic()
        if not force and now - self._recorded_at < RECORD_EVERY_SECONDS:
            return
        self._recorded_at = now
        catch_up = {**self.job.progress.get("catch_up", {}), **extra}
        self.runner._save(progress={**self.job.progress, "gtid": position, "catch_up": catch_up})

    def catch_up(self, until: str | None = None) -> int:
        """Apply the binlog from the recorded GTID to its end (or to ``until``); record the
        new position and the lag. Returns the transactions still behind the source."""
        from django_shards.resharding.stream import (
            StreamBroken,
            current_gtid,
            transactions_behind,
        )

        broken: tuple[type[BaseException], ...] = (
            StreamBroken,
            OSError,
            DatabaseError,
            *pymysql_errors(),
        )
        for attempt in range(1, STREAM_ATTEMPTS + 1):
            try:
                result = self.stream.catch_up(
                    self.gtid, until=until, on_transaction=lambda position: self._record(position)
                )
                break
            except broken as exc:
                # the stream broke (a killed connection, a restarted server): start again
                # from the last recorded GTID, never from where the library thinks it was
                if attempt == STREAM_ATTEMPTS:
                    raise SplitError(
                        f"The binlog stream of {self.source!r} failed {attempt} times in a "
                        f"row ({exc}); the split stops, resumable from GTID {self.gtid}."
                    ) from exc
                self.runner.report(StreamRestarted(self.gtid, str(exc)))
                time.sleep(0.1 * attempt)
        if self.touched is not None:
            self.touched |= set(result.touched)
        current = current_gtid(self.source)
        behind = transactions_behind(result.position, current)
        seconds = (
            max(0.0, time.time() - result.last_timestamp)
            if behind and result.last_timestamp
            else 0.0
        )
        applied = (
            self.job.progress.get("catch_up", {}).get("applied", 0) + result.transactions_applied
        )
        self._record(
            result.position,
            force=True,
            behind=behind,
            lag_seconds=round(seconds, 3),
            applied=applied,
            at=time.time(),
        )
        self.runner.report(
            CatchingUp(result.position, behind, seconds, result.transactions_applied)
        )
        self.runner._reached("catching up")
        return behind

    def catch_up_and_fence(self, lease: float) -> None:
        """From ``catching_up`` (or a ``frozen`` split resumed) to ``verified``. ``lease``:
        one map lease and its margin, in seconds."""
        runner = self.runner
        if self.job.phase == Phase.FROZEN:  # resumed: lift the freeze, fence again
            runner._save(phase=Phase.CATCHING_UP, frozen=False)
            runner.report(PhaseRecorded(Phase.CATCHING_UP))
        # every process must re-read the map every FENCE_POLL_SECONDS before the freeze
        noticed_at = float(self.job.progress.get("catching_up_at") or time.time()) + lease
        for attempt in range(FENCE_ATTEMPTS):
            while True:
                started = time.monotonic()
                self.catch_up()
                quick = time.monotonic() - started < FENCE_PASS_SECONDS
                if time.time() < noticed_at:  # not every process polls yet
                    if quick:
                        time.sleep(0.05)  # don't spin on the source
                elif not quick:
                    continue  # a long pass: the drain inside the fence would be long too
                elif self.touched is None:
                    self.verify_all()  # then catch up again: the verification took time
                else:
                    break
            if self._fence():
                return
            runner.report(FenceRetried(attempt + 1))
        raise SplitError(
            f"The fence was tried {FENCE_ATTEMPTS} times and each time a transaction on the "
            f"source {self.source!r} stayed open longer than {FENCE_TRANSACTION_WAIT_SECONDS}s; "
            "the freeze is lifted and nothing was cut over. Run again with --resume."
        )

    def _fence(self) -> bool:
        """Freeze, drain, re-verify. True when verified (the freeze holds); False when an
        old transaction on the source outlived the wait (the freeze is lifted)."""
        runner = self.runner
        runner._save(frozen=True, progress={**self.job.progress, "frozen_at": time.time()})
        runner._reached("freeze recorded")
        time.sleep(shardmap.FENCE_POLL_SECONDS + FENCE_MARGIN_SECONDS)  # every process has re-read
        runner._advance(Phase.FROZEN)
        runner._reached(Phase.FROZEN)
        if not self._open_transactions_ended():
            runner._save(phase=Phase.CATCHING_UP, frozen=False)
            runner.report(PhaseRecorded(Phase.CATCHING_UP))
            return False
        self.drain_and_reverify()
        runner._advance(Phase.VERIFIED)
        return True

    def _open_transactions_ended(self) -> bool:
        """Wait (at most FENCE_TRANSACTION_WAIT_SECONDS) until every transaction open now on
        the source's database has ended. Called once every process refuses writes to the
        moving keys: a write that passed the freeze check before then commits in one of
        these (a transaction opened later cannot hold such a write)."""
        import MySQLdb

        from django_shards.operator import operator_connect

        database = connections[self.source].settings_dict["NAME"]
        sql = (
            "SELECT t.trx_id FROM information_schema.INNODB_TRX t "
            "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
            "WHERE p.DB = %s AND p.ID <> CONNECTION_ID()"
        )
        deadline = time.monotonic() + FENCE_TRANSACTION_WAIT_SECONDS
        conn = operator_connect(self.source)
        try:
            waiting: set[Any] | None = None
            while True:
                with conn.cursor() as cursor:
                    try:
                        cursor.execute(sql, [database])
                    except MySQLdb.OperationalError as exc:
                        if exc.args[0] not in ACCESS_DENIED:
                            raise
                        logger.warning(
                            "cannot list the transactions open on %s (%s); the fence waits "
                            "%.1fs instead (the operator account needs PROCESS)",
                            self.source,
                            exc,
                            FENCE_TRANSACTION_WAIT_SECONDS,
                        )
                        time.sleep(FENCE_TRANSACTION_WAIT_SECONDS)
                        return True
                    open_now = {trx_id for (trx_id,) in cursor.fetchall()}
                waiting = open_now if waiting is None else waiting & open_now
                if not waiting:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
        finally:
            conn.close()

    # -- verification ----------------------------------------------------------------------

    def verify_all(self) -> None:
        """Compare every moving row on both sides at one snapshot of the source (the stream
        stopped exactly at its GTID). Raises ``SplitError`` on a difference."""
        from django_shards.resharding.stream import snapshot

        with snapshot(self.source) as (source_conn, gtid):
            self.catch_up(until=gtid)
            self.touched = set()
            mismatches = []
            for spec in self.tables:
                mismatches += self._verify_table(source_conn, spec)
        if mismatches:
            self._verification_failed(mismatches)

    def _verify_table(self, source_conn: Any, spec: TableSpec) -> list[str]:
        from django_shards.operator import operator_connect

        runner = self.runner
        q = connections[self.target].ops.quote_name
        pk_index = spec.columns.index(spec.pk_column)
        target_conn = operator_connect(self.target)
        mismatches: list[str] = []
        rows_total = batches = 0
        after = None
        try:
            while True:
                sql, params = self._select_moving(spec, after, runner.batch_size)
                with source_conn.cursor() as cursor:
                    cursor.execute(sql, params)
                    rows = [tuple(r) for r in cursor.fetchall()]
                moving = [r for r in rows if runner.moves(r[spec.key_index], spec)]
                last = rows[-1][pk_index] if rows and len(rows) == runner.batch_size else None
                with target_conn.cursor() as cursor:
                    cursor.execute(*pk_range_sql(q, spec, after, last))
                    target_rows = [tuple(r) for r in cursor.fetchall()]
                batches += 1
                rows_total += len(moving)
                if len(moving) != len(target_rows) or batch_checksum(moving) != batch_checksum(
                    target_rows
                ):
                    upto = "the end" if last is None else f"pk {last}"
                    mismatches.append(
                        f"{spec.label}: rows after pk {after} up to {upto}: source "
                        f"{len(moving)} rows, target {len(target_rows)} rows"
                        + (", checksums differ" if len(moving) == len(target_rows) else "")
                    )
                if last is None:
                    break
                after = last
        finally:
            target_conn.close()
        runner.report(TableVerified(spec.label, rows_total, batches))
        return mismatches

    def drain_and_reverify(self) -> None:
        """Inside the fence: apply the binlog up to a last snapshot's GTID, then compare the
        rows it touched since the full verification (not the whole table)."""
        from django_shards.operator import operator_connect
        from django_shards.resharding.stream import snapshot

        with snapshot(self.source) as (source_conn, gtid):
            self.catch_up(until=gtid)
            touched = self.touched or set()
            by_label: dict[str, list[Any]] = {}
            for label, pk in touched:
                by_label.setdefault(label, []).append(pk)
            mismatches = []
            target_conn = operator_connect(self.target)
            try:
                for spec in self.tables:
                    pks = sorted(by_label.get(spec.label, []))
                    for start in range(0, len(pks), 500):
                        chunk = pks[start : start + 500]
                        mismatches += self._compare_rows(source_conn, target_conn, spec, chunk)
            finally:
                target_conn.close()
        self.runner._save(progress={**self.job.progress, "reverified_rows": len(touched)})
        if mismatches:
            self._verification_failed(mismatches)

    def _compare_rows(
        self, source_conn: Any, target_conn: Any, spec: TableSpec, pks: list[Any]
    ) -> list[str]:
        q = connections[self.target].ops.quote_name
        sql = (
            f"SELECT {', '.join(q(c) for c in spec.columns)} FROM {q(spec.table)} "
            f"WHERE {q(spec.pk_column)} IN ({', '.join(['%s'] * len(pks))}) "
            f"ORDER BY {q(spec.pk_column)}"
        )
        with source_conn.cursor() as cursor:
            cursor.execute(sql, pks)
            source_rows = [
                tuple(r) for r in cursor.fetchall() if self.runner.moves(r[spec.key_index], spec)
            ]
        with target_conn.cursor() as cursor:
            cursor.execute(sql, pks)
            target_rows = [tuple(r) for r in cursor.fetchall()]
        if source_rows == target_rows:
            return []
        return [
            f"{spec.label}: {len(pks)} rows written during the catch-up differ "
            f"(source {len(source_rows)}, target {len(target_rows)})"
        ]

    def _verification_failed(self, mismatches: list[str]) -> None:
        runner = self.runner
        progress = {**self.job.progress, "dirty": True, "verify": mismatches}
        runner._save(
            frozen=False,
            phase=Phase.PREPARED,
            progress=progress,
            error="; ".join(mismatches),
        )
        raise SplitError(
            "Verification failed, nothing was cut over and the freeze is lifted:\n  "
            + "\n  ".join(mismatches)
            + "\nRun again with --resume to copy afresh, or --abort."
        )

    # -- after the cutover -----------------------------------------------------------------

    def grace(self, seconds: float) -> None:
        """After the cutover, keep applying the source's binlog for ``seconds``: a write
        that passed the freeze check just before the freeze and committed late reaches the
        new shard. Ends before the clean-up (whose deletes must not be applied)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.catch_up()
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        finally:
            self.stream.close()
