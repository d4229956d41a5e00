"""The online split's change stream (MariaDB): a consistent snapshot and its GTID, then the
source's binlog applied to the target for the rows that move.

- :func:`snapshot` opens ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` as the operator and
  gives the GTID position the copy corresponds to.
- :class:`ChangeStream` reads the source's row events from a GTID position with the
  maintained ``mysql-replication`` library and applies the moving rows' changes to the
  target, one target transaction per source transaction. Applying is idempotent: the
  after image is upserted whole, deletes go by primary key, so replaying from an older
  position converges on the same rows.
- The library silently reconnects and replays from its starting position when its
  connection drops; here a dropped connection raises :class:`StreamBroken` instead, and
  the caller restarts from the last position it recorded (``on_transaction``).

Needs ``binlog_format=ROW``, ``binlog_row_image=FULL`` and ``binlog_row_metadata=FULL`` on
the source, and ``DJANGO_SHARDS["OPERATOR"]`` with ``REPLICATION SLAVE`` and ``BINLOG
MONITOR``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import DatabaseError, connections, transaction

from django_shards.exceptions import SplitError
from django_shards.operator import binlog_settings, operator_connect
from django_shards.resharding.upsert import upsert_sql

#: MariaDB's GTID event flag of a statement outside any transaction (DDL): no Xid follows
_FL_STANDALONE = 1
_COM_BINLOG_DUMP = 0x12
#: readers' server ids: above any port-numbered or hand-picked id of a topology
_SERVER_ID_BASE = 1 << 31


class StreamBroken(SplitError):
    """The binlog stream's connection failed mid-way. Restart from the last position
    ``on_transaction`` reported: every transaction up to it was applied."""


class StreamTable(Protocol):
    """What the stream needs of a table (``resharding.plan.TableSpec`` has it)."""

    @property
    def table(self) -> str: ...
    @property
    def columns(self) -> tuple[str, ...]: ...
    @property
    def pk_column(self) -> str: ...
    @property
    def key_index(self) -> int: ...
    @property
    def label(self) -> str: ...


#: ``moves(spec, row)``: whether a row (a tuple in ``spec.columns`` order) moves
Moves = Callable[[Any, tuple[Any, ...]], bool]

# -- GTID positions ----------------------------------------------------------------------


def parse_gtid(position: str) -> dict[int, tuple[int, int]]:
    """``"0-3310-12,1-3311-4"`` -> ``{domain: (server_id, seq_no)}``; ValueError if malformed."""
    parsed: dict[int, tuple[int, int]] = {}
    for part in position.split(","):
        if part.strip():
            try:
                domain, server, seq = (int(n) for n in part.strip().split("-"))
            except ValueError:
                raise ValueError(f"{position!r} is not a GTID position") from None
            parsed[domain] = (server, seq)
    return parsed


def format_gtid(position: dict[int, tuple[int, int]]) -> str:
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(position.items()))


def gtid_reached(position: str, wanted: str) -> bool:
    """Whether ``position`` includes every domain of ``wanted`` up to its sequence number."""
    have = parse_gtid(position)
    return all(d in have and have[d][1] >= seq for d, (_s, seq) in parse_gtid(wanted).items())


def transactions_behind(applied: str, current: str) -> int:
    """How many transactions ``applied`` lacks of ``current``, summed over domains."""
    have = parse_gtid(applied)
    return sum(
        max(0, seq - (have[d][1] if d in have else 0))
        for d, (_s, seq) in parse_gtid(current).items()
    )


def current_gtid(alias: str) -> str:
    """``@@gtid_binlog_pos`` of ``alias``'s server (read as the app's user)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT @@gtid_binlog_pos")
        (position,) = cursor.fetchone()
    return str(position or "")


@contextlib.contextmanager
def snapshot(alias: str) -> Iterator[tuple[Any, str]]:
    """A consistent snapshot of ``alias`` as the operator: yields ``(connection,
    gtid_position)``; every read on the connection sees exactly the transactions up to
    that position. Commits and closes the connection on exit."""
    conn = operator_connect(alias)
    try:
        cursor = conn.cursor()
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        cursor.execute("SHOW STATUS LIKE 'binlog_snapshot_%%'")
        status = {str(name).lower(): value for name, value in cursor.fetchall()}
        cursor.execute(
            "SELECT BINLOG_GTID_POS(%s, %s)",
            [status["binlog_snapshot_file"], int(status["binlog_snapshot_position"])],
        )
        (position,) = cursor.fetchone()
        if position is None:
            raise SplitError(f"{alias!r} has no binary log to take a snapshot's GTID from.")
        yield conn, position.decode() if isinstance(position, bytes) else str(position)
        conn.commit()
    finally:
        conn.close()


# -- the stream --------------------------------------------------------------------------


@dataclass
class CatchUp:
    """What one :meth:`ChangeStream.catch_up` did. Events are row changes of the group's
    tables (one per row of a binlog rows event); applied ones are those of moving rows."""

    position: str
    transactions_seen: int = 0
    transactions_applied: int = 0
    events_seen: int = 0
    events_applied: int = 0
    #: the source's timestamp (Unix seconds) of the last event read, or None
    last_timestamp: float | None = None
    #: ``(table label, pk)`` of every moving row changed
    touched: set[tuple[str, Any]] = field(default_factory=set)


@dataclass
class _Change:
    upsert: bool  # else delete by pk
    spec: Any
    values: tuple[Any, ...]  # the row (upsert) or (pk,) (delete)


@dataclass
class _Transaction:
    domain: int
    server: int
    seq: int
    standalone: bool
    events: int = 0
    changes: list[_Change] = field(default_factory=list)


class _StreamConnector:
    """The reader's ``pymysql_wrapper``: opens its stream connection once; a second one
    (the library reconnecting after a failure, to replay from its start) raises."""

    def __init__(self) -> None:
        self.stream: Any = None

    def __call__(self, **kwargs: Any) -> Any:
        import pymysql

        if "cursorclass" in kwargs:  # the control connection (information_schema)
            kwargs.setdefault("database", kwargs.pop("db", None))  # PyMySQL's name for it
            return pymysql.connect(**kwargs)
        if self.stream is not None:
            raise StreamBroken("its connection was lost")
        self.stream = pymysql.connect(**kwargs)
        self.stream._write_bytes = _exact_dump_request(self.stream._write_bytes)
        return self.stream


def _exact_dump_request(write: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """mysql-replication 1.0's MariaDB ``COM_BINLOG_DUMP`` declares 14 bytes and sends 15.
    The server never reads the stray byte, so closing the connection at the binlog's end
    sends a TCP reset, which can discard the stream's last events before they are read
    (seen: a failure after a few MB of events). Send only the bytes the packet declares."""

    def send(data: bytes) -> None:
        if len(data) > 4 and data[4] == _COM_BINLOG_DUMP:
            data = data[: 4 + int.from_bytes(data[:3], "little")]
        write(data)

    return send


def new_server_id() -> int:
    """A random replica server id for one reader, in [2**31, 2**32): never a topology's."""
    return _SERVER_ID_BASE + secrets.randbelow(_SERVER_ID_BASE - 1) + 1


class ChangeStream:
    """Applies ``source_alias``'s binlog changes of moving rows of ``tables`` to
    ``target_alias`` (through Django's connection, the app's user). One :meth:`catch_up`
    at a time per instance; each instance reads with its own server id."""

    def __init__(
        self,
        source_alias: str,
        target_alias: str,
        tables: Sequence[StreamTable],
        moves: Moves,
        server_id: int | None = None,
    ) -> None:
        self.source = source_alias
        self.target = target_alias
        self.tables = {spec.table: spec for spec in tables}
        self.moves = moves
        self.server_id = new_server_id() if server_id is None else server_id
        if not 0 < self.server_id < 1 << 32:
            raise SplitError(f"A binlog reader's server id must be in 1..2**32-1, not {server_id}.")
        self._pk_index = {spec.table: spec.columns.index(spec.pk_column) for spec in tables}
        self._connector: _StreamConnector | None = None
        self._reader: Any = None
        #: the open reader's position (parsed, updated as it reads) and as last returned
        self._position: dict[int, tuple[int, int]] | None = None
        self._reached: str | None = None

    @property
    def connection_id(self) -> int | None:
        """The source's id of the stream's connection while :meth:`catch_up` reads (what
        ``KILL`` takes), else None."""
        stream = self._connector.stream if self._connector is not None else None
        return None if stream is None else int(stream.thread_id())

    def catch_up(
        self,
        from_gtid: str,
        *,
        until: str | None = None,
        on_transaction: Callable[[str], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> CatchUp:
        """Read the binlog after ``from_gtid`` to its end (the source's ``@@gtid_binlog_pos``
        when the call starts), or until the position ``until`` is reached (stopping right
        after the transaction that reaches it), applying moving rows' changes to the
        target. The reader stays open for the next call that starts where this one ended;
        :meth:`close` it when done. After each source transaction with events of the
        tables, ``on_transaction(position)`` gets the full position after it, once it is
        applied. ``stop()`` is asked after each source transaction; True ends the call
        there. Raises :class:`StreamBroken` when the stream's connection fails."""
        from pymysql.err import Error as PyMySQLError
        from pymysqlreplication.event import MariadbGtidEvent, QueryEvent, XidEvent

        position = parse_gtid(from_gtid)
        result = CatchUp(format_gtid(position))
        end = until if until is not None else current_gtid(self.source)
        if gtid_reached(result.position, end):
            return result
        reader = self._open_reader(result.position)
        assert self._position is not None
        position = self._position
        txn: _Transaction | None = None
        try:
            with self._target_session():
                for event in reader:
                    if event.timestamp:  # the stream's own fake events have none
                        result.last_timestamp = float(event.timestamp)
                    if isinstance(event, MariadbGtidEvent):
                        standalone = bool(event.flags & _FL_STANDALONE)
                        txn = _Transaction(
                            event.domain_id, event.server_id, event.gtid_seq_no, standalone
                        )
                        continue
                    if txn is None:
                        continue  # only a transaction's events, never part of one
                    if isinstance(event, QueryEvent):
                        if not (txn.standalone or event.query.strip().upper() == "COMMIT"):
                            continue  # BEGIN, or a statement inside a transaction
                    elif not isinstance(event, XidEvent):
                        self._collect(txn, event, result)
                        continue
                    position[txn.domain] = (txn.server, txn.seq)
                    self._finish(txn, format_gtid(position), result, on_transaction)
                    txn = None
                    if gtid_reached(result.position, end):
                        break
                    if stop is not None and stop():
                        break
        except (PyMySQLError, StreamBroken) as exc:
            self.close()
            raise StreamBroken(
                f"The binlog stream from {self.source!r} failed ({exc.args[-1]}) after "
                f"{result.position!r}; restart from the last recorded position."
            ) from exc
        except BaseException:
            self.close()  # a transaction half read: the reader cannot go on from here
            raise
        self._reached = result.position
        return result

    def _open_reader(self, from_position: str) -> Any:
        """The open reader when it stands at ``from_position``; else a new one from there.

        A reader stays open between calls (a blocking dump: the server pushes new events as
        they are written), since opening one from a GTID makes the server scan its binlog
        file from the start to find that GTID."""
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import MariadbGtidEvent, QueryEvent, XidEvent
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        if self._reader is not None and self._reached == from_position:
            return self._reader
        self.close()
        if not connections[self.source].mysql_is_mariadb:  # type: ignore[attr-defined]
            raise SplitError(f"{self.source!r} is not MariaDB: the change stream reads GTIDs.")
        self._connector = _StreamConnector()
        self._reader = BinLogStreamReader(
            connection_settings=binlog_settings(self.source),
            server_id=self.server_id,
            is_mariadb=True,
            auto_position=from_position,
            blocking=True,
            only_schemas=[connections[self.source].settings_dict["NAME"]],
            only_tables=list(self.tables),
            only_events=[
                WriteRowsEvent,
                UpdateRowsEvent,
                DeleteRowsEvent,
                MariadbGtidEvent,
                XidEvent,
                QueryEvent,
            ],
            pymysql_wrapper=self._connector,
            enable_logging=False,
        )
        self._position = parse_gtid(from_position)
        self._reached = from_position
        return self._reader

    def close(self) -> None:
        """Close the reader, if one is open (the next :meth:`catch_up` opens a new one)."""
        reader, self._reader, self._connector = self._reader, None, None
        self._position = self._reached = None
        if reader is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                reader.close()

    def _finish(
        self,
        txn: _Transaction,
        position: str,
        result: CatchUp,
        on_transaction: Callable[[str], None] | None,
    ) -> None:
        """Apply a source transaction's changes (if any), then report it."""
        if txn.changes:
            self._apply(txn.changes)
            result.transactions_applied += 1
            result.events_applied += len(txn.changes)
        result.position = position
        if txn.events:
            result.transactions_seen += 1
            result.events_seen += txn.events
            if on_transaction is not None:
                on_transaction(position)

    def _row(self, spec: Any, values: dict[str, Any]) -> tuple[Any, ...]:
        try:
            return tuple(values[column] for column in spec.columns)
        except KeyError as exc:
            raise SplitError(
                f"The binlog of {self.source!r} does not name {spec.table}'s column {exc}: "
                "the source needs binlog_row_metadata=FULL and binlog_row_image=FULL."
            ) from None

    def _collect(self, txn: _Transaction, event: Any, result: CatchUp) -> None:
        """The moving rows' changes of a rows event, in order."""
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent

        spec = self.tables.get(event.table)
        if spec is None:
            return
        pk = self._pk_index[spec.table]
        for raw in event.rows:
            txn.events += 1
            if isinstance(event, UpdateRowsEvent):
                before = self._row(spec, raw["before_values"])
                after = self._row(spec, raw["after_values"])
            elif isinstance(event, DeleteRowsEvent):
                before, after = self._row(spec, raw["values"]), None
            else:
                before, after = None, self._row(spec, raw["values"])
            moved_before = before is not None and self.moves(spec, before)
            moved_after = after is not None and self.moves(spec, after)
            if moved_before and before is not None:
                result.touched.add((spec.label, before[pk]))
                if after is None or not moved_after or after[pk] != before[pk]:
                    txn.changes.append(_Change(False, spec, (before[pk],)))
            if moved_after and after is not None:
                result.touched.add((spec.label, after[pk]))
                txn.changes.append(_Change(True, spec, tuple(map(_db_value, after))))

    @contextlib.contextmanager
    def _target_session(self) -> Iterator[None]:
        """The target's session while applying: no foreign key checks (a child may arrive
        before the copy of its parent is complete), UTC for TIMESTAMP values (the reader
        decodes them in UTC); both restored after."""
        with connections[self.target].cursor() as cursor:
            cursor.execute("SELECT @@session.foreign_key_checks, @@session.time_zone")
            fk_checks, time_zone = cursor.fetchone()
            cursor.execute("SET SESSION foreign_key_checks = 0, time_zone = '+00:00'")
        try:
            yield
        finally:
            with contextlib.suppress(DatabaseError):  # a new connection starts with defaults
                with connections[self.target].cursor() as cursor:
                    cursor.execute(
                        "SET SESSION foreign_key_checks = %s, time_zone = %s",
                        [fk_checks, time_zone],
                    )

    def _apply(self, changes: list[_Change]) -> None:
        """One target transaction: runs of upserts, runs of deletes, in source order."""
        conn = connections[self.target]
        quote = conn.ops.quote_name
        with transaction.atomic(using=self.target), conn.cursor() as cursor:
            for (upsert, spec), run in itertools.groupby(changes, lambda c: (c.upsert, c.spec)):
                rows = [change.values for change in run]
                if upsert:
                    cursor.executemany(upsert_sql(spec), rows)
                else:
                    marks = ", ".join(["%s"] * len(rows))
                    cursor.execute(
                        f"DELETE FROM {quote(spec.table)} WHERE {quote(spec.pk_column)} "
                        f"IN ({marks})",
                        [pk for (pk,) in rows],
                    )


def _db_value(value: Any) -> Any:
    """A binlog value as the target's driver takes it: a SET as its comma list, MySQL's
    binary JSON as JSON text; everything else as decoded."""
    if isinstance(value, (set, frozenset)):
        return ",".join(sorted(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
