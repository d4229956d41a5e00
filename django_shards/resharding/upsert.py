"""Writing rows into a split's new shard: the upsert every copy and catch-up uses, and
the connections the online copy writes its batches on.

An upsert of the whole row (``INSERT ... ON DUPLICATE KEY UPDATE`` every column) makes
writing a row twice change nothing, so a copy or a replay resumed from an earlier point
converges on the same rows.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from django.db import connections

logger = logging.getLogger("django_shards")

#: connections writing the copy's batches to the new shard while the next one is read
COPY_WRITERS = 2


class Table(Protocol):
    """What an upsert needs of a table (``resharding.plan.TableSpec`` has it)."""

    @property
    def table(self) -> str: ...
    @property
    def columns(self) -> tuple[str, ...]: ...


def upsert_sql(alias: str, spec: Table) -> str:
    """``INSERT`` of one row of ``spec`` (``%s`` placeholders, in ``spec.columns`` order)
    that overwrites every column of a row already there; ``executemany`` sends many rows
    in one statement."""
    q = connections[alias].ops.quote_name
    cols = ", ".join(q(c) for c in spec.columns)
    updates = ", ".join(f"{q(c)} = VALUES({q(c)})" for c in spec.columns)
    values = ", ".join(["%s"] * len(spec.columns))
    return (
        f"INSERT INTO {q(spec.table)} ({cols}) VALUES ({values}) ON DUPLICATE KEY UPDATE {updates}"
    )


class BatchWriters:
    """COPY_WRITERS connections to the new primary (the app's user, from its alias's
    settings, foreign key checks off: parents and children arrive in any order), each
    committing one batch at a time; :meth:`submit` returns the batch's future."""

    def __init__(self, alias: str, upsert: str) -> None:
        self.alias = alias
        self.upsert = upsert
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.opened: list[Any] = []
        self.pool = ThreadPoolExecutor(COPY_WRITERS, thread_name_prefix="shard-copy")

    def __enter__(self) -> BatchWriters:
        wrapper = connections[self.alias]
        params = wrapper.get_connection_params()
        for _ in range(COPY_WRITERS):
            conn = wrapper.get_new_connection(params)
            self.opened.append(conn)
            with conn.cursor() as cursor:
                cursor.execute("SET SESSION foreign_key_checks = 0")
            self.idle.put(conn)
        return self

    def submit(self, rows: list[tuple[Any, ...]]) -> Future[None]:
        return self.pool.submit(self._write, rows)

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        conn = self.idle.get()
        try:
            with conn.cursor() as cursor:
                cursor.executemany(self.upsert, rows)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            self.idle.put(conn)

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        for conn in self.opened:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection: nothing to keep
                logger.debug("closing a copy connection to %s failed", self.alias)
