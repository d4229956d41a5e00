"""Writing rows into a split's new shard: the upsert every copy and catch-up uses, and
the connections the online copy writes its batches on.

An upsert of the whole row (``INSERT ... ON DUPLICATE KEY UPDATE`` every column) makes
writing a row twice change nothing, so a copy or a replay resumed from an earlier point
converges on the same rows.

The online copy does not turn rows into Python values and back: the source renders each
row as the SQL literal of an ``INSERT``'s ``VALUES`` (:func:`row_literal_sql`, the way
``mysqldump`` writes rows, but exact for every column type), and the copy joins those
into one statement per batch (:meth:`BatchWriters.submit`).
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from django.db import connections

logger = logging.getLogger("django_shards")

#: connections writing the copy's batches to the new shard while the next one is read
COPY_WRITERS = 3
#: column types whose values are bytes: written as hexadecimal literals (``X'...'``), so
#: no character set ever reinterprets them
BINARY_TYPES = frozenset(
    {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry", "point",
     "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
     "geometrycollection"}
)  # fmt: skip
#: column types whose values are numbers: written bare, as the server prints them (a
#: double's text is the shortest that reads back to the same bits)
NUMBER_TYPES = frozenset(
    {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal", "double"}
)
#: the most bytes of rows in one statement of the copy (mysqldump's own statement size),
#: unless the server's max_allowed_packet is smaller
COPY_STATEMENT_BYTES = 1 << 20
#: column types whose values are text in the column's own character set
TEXT_TYPES = frozenset(
    {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json"}
)


class Table(Protocol):
    """What an upsert needs of a table (``resharding.plan.TableSpec`` has it)."""

    @property
    def table(self) -> str: ...
    @property
    def columns(self) -> tuple[str, ...]: ...


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _insert_parts(spec: Table) -> tuple[str, str]:
    cols = ", ".join(_quote(c) for c in spec.columns)
    updates = ", ".join(f"{_quote(c)} = VALUES({_quote(c)})" for c in spec.columns)
    head = f"INSERT INTO {_quote(spec.table)} ({cols}) VALUES "
    return head, f" ON DUPLICATE KEY UPDATE {updates}"


def upsert_sql(spec: Table) -> str:
    """``INSERT`` of one row of ``spec`` (``%s`` placeholders, in ``spec.columns`` order)
    that overwrites every column of a row already there (MySQL/MariaDB SQL);
    ``executemany`` sends many rows in one statement."""
    head, tail = _insert_parts(spec)
    return head + "(" + ", ".join(["%s"] * len(spec.columns)) + ")" + tail


def column_literal_sql(column: str, data_type: str) -> str:
    """SQL rendering ``column`` as the literal that writes its value back exactly (``NULL``
    for NULL): numbers bare, text converted to ``utf8mb4`` and quoted, bytes as
    hexadecimal, ``bit`` as its number, single-precision ``float`` through ``double`` (its
    own text form keeps only 6 digits), everything else (dates, times, years) quoted as
    the server prints it, which it reads back unchanged."""
    col = _quote(column)
    kind = data_type.lower()
    if kind in NUMBER_TYPES:
        return f"IFNULL({col}, 'NULL')"
    if kind in BINARY_TYPES:
        return f"IF({col} IS NULL, 'NULL', CONCAT('X''', HEX({col}), ''''))"
    if kind == "bit":
        return f"IFNULL(CAST({col} AS UNSIGNED), 'NULL')"
    if kind == "float":
        return f"IFNULL(CAST({col} AS DOUBLE), 'NULL')"
    if kind in TEXT_TYPES:
        return f"QUOTE(CONVERT({col} USING utf8mb4))"
    return f"QUOTE({col})"


def row_literal_sql(source_conn: Any, spec: Table) -> str:
    """SQL (for a ``SELECT`` on the source) giving each row of ``spec`` as the bytes of its
    ``VALUES`` literal, ``(v1, v2, ...)`` in ``spec.columns`` order. The column types are
    read from the source's ``information_schema`` on ``source_conn`` (a DB-API connection
    to the source's database). The session should use ``time_zone = '+00:00'`` on both
    sides, so ``timestamp`` columns read and write the same instant."""
    with source_conn.cursor() as cursor:
        cursor.execute(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            [spec.table],
        )
        types = {_text(name): _text(kind) for name, kind in cursor.fetchall()}
    missing = [c for c in spec.columns if c not in types]
    if missing:
        raise LookupError(f"{spec.table} has no column(s) {', '.join(missing)} on the source")
    parts = ", ',', ".join(column_literal_sql(c, types[c]) for c in spec.columns)
    return f"CAST(CONCAT('(', {parts}, ')') AS BINARY)"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BatchWriters:
    """COPY_WRITERS connections to the new primary (the app's user, from its alias's
    settings, foreign key checks off: parents and children arrive in any order, time
    zone UTC), each committing one batch at a time; :meth:`submit` returns the batch's
    future. A batch is the rows' literals from :func:`row_literal_sql`, joined by commas:
    it is sent as one upsert."""

    def __init__(self, alias: str, spec: Table) -> None:
        self.alias = alias
        head, tail = _insert_parts(spec)
        self.head, self.tail = head.encode(), tail.encode()
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.opened: list[Any] = []
        self.pool = ThreadPoolExecutor(COPY_WRITERS, thread_name_prefix="shard-copy")
        #: the most bytes of rows one batch may have
        self.max_batch_bytes = COPY_STATEMENT_BYTES

    def __enter__(self) -> BatchWriters:
        wrapper = connections[self.alias]
        params = wrapper.get_connection_params()
        for _ in range(COPY_WRITERS):
            conn = wrapper.get_new_connection(params)
            self.opened.append(conn)
            with conn.cursor() as cursor:
                cursor.execute("SET SESSION foreign_key_checks = 0, time_zone = '+00:00'")
                cursor.execute("SELECT @@max_allowed_packet")
                (packet,) = cursor.fetchone()
            room = int(packet) // 2 - len(self.head) - len(self.tail)
            self.max_batch_bytes = min(COPY_STATEMENT_BYTES, room)
            self.idle.put(conn)
        return self

    def submit(self, values: bytes) -> Future[None]:
        """Upsert ``values`` (``(...),(...)``) on the next idle connection, in a thread."""
        return self.pool.submit(self._write, values)

    def _write(self, values: bytes) -> None:
        if not values:
            return
        conn = self.idle.get()
        try:
            with conn.cursor() as cursor:
                cursor.execute(self.head + values + self.tail)  # no arguments: no formatting
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
