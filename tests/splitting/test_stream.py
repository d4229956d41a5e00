"""The online split's change stream: a snapshot's GTID, then the source's binlog applied to
the target for the rows that move (``django_shards.resharding.stream``).

On the real topology: the source is s0 (shard0 on p0), the target the spare s4 (on p1).
The rows that move are those of chosen author ids; ORM writes and raw SQL writes made on
the source after the snapshot must reach the target, and only those of moving rows. What
the target should hold is read with plain SQL from the source, never asked of the stream.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.db.models import F

from django_shards.exceptions import SplitError
from django_shards.operator import OperatorUnavailable, binlog_settings, operator_connect
from django_shards.resharding.plan import TableSpec, group_tables
from django_shards.resharding.stream import (
    ChangeStream,
    StreamBroken,
    current_gtid,
    gtid_reached,
    parse_gtid,
    snapshot,
    transactions_behind,
)
from django_shards.shardmap import get_map
from tests.support.backend import MARIADB
from tests.testapp.models import Author, Follow, Post

SOURCE, OTHER_SCHEMA_SAME_SERVER, TARGET = "s0", "s3", "s4"
online = [
    pytest.mark.mariadb,
    pytest.mark.skipif(
        not (MARIADB and settings.DJANGO_SHARDS.get("OPERATOR")),
        reason="the change stream needs MariaDB and the OPERATOR account",
    ),
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

# -- GTID positions (no database) ----------------------------------------------------------


def test_a_position_is_reached_when_every_domain_of_the_wanted_one_is():
    assert gtid_reached("0-3310-12,1-3311-4", "0-3310-12")
    assert gtid_reached("0-3310-13", "0-3310-12")
    assert not gtid_reached("0-3310-11", "0-3310-12")
    assert not gtid_reached("0-3310-99", "0-3310-1,1-3311-1")  # domain 1 never seen
    assert gtid_reached("", "")
    assert parse_gtid(" 0-1-2 , 3-4-5 ") == {0: (1, 2), 3: (4, 5)}
    with pytest.raises(ValueError, match="not a GTID position"):
        parse_gtid("0-x-2")


def test_transactions_behind_sums_the_domains():
    assert transactions_behind("0-3310-10,1-3311-5", "0-3310-12,1-3311-9") == 6
    assert transactions_behind("0-3310-10", "0-3310-10") == 0
    assert transactions_behind("0-3310-15", "0-3310-10") == 0  # ahead is not behind
    assert transactions_behind("", "0-3310-3") == 3


# -- the operator account ------------------------------------------------------------------


@pytest.mark.skipif(MARIADB, reason="needs an alias that is not MySQL (the SQLite run)")
def test_operator_refuses_an_alias_without_a_binlog_and_never_shows_the_password(settings):
    settings.DJANGO_SHARDS = {
        **settings.DJANGO_SHARDS,
        "OPERATOR": {"USER": "op", "PASSWORD": "hunter2-secret"},
    }
    with pytest.raises(OperatorUnavailable, match="is not MySQL/MariaDB") as caught:
        binlog_settings("s0")
    assert "hunter2-secret" not in str(caught.value)
    assert isinstance(caught.value, SplitError)


def test_operator_not_configured_is_one_clear_error(settings):
    settings.DJANGO_SHARDS = {k: v for k, v in settings.DJANGO_SHARDS.items() if k != "OPERATOR"}
    with pytest.raises(OperatorUnavailable, match=r'DJANGO_SHARDS\["OPERATOR"\] is not configured'):
        operator_connect("s0")


# -- on the topology -----------------------------------------------------------------------


def _sql(alias: str, query: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple]:
    with connections[alias].cursor() as cursor:
        cursor.execute(query, params)
        return list(cursor.fetchall()) if cursor.description else []


def _table_rows(alias: str, spec: Any, keys: set[int] | None = None) -> list[tuple]:
    """Every row of a table on ``alias`` (only those of ``keys`` if given), by pk."""
    columns = ", ".join(spec.columns)  # in the model's order, maybe not the table's
    rows = _sql(alias, f"SELECT {columns} FROM {spec.table} ORDER BY {spec.pk_column}")
    return [r for r in rows if keys is None or r[spec.key_index] in keys]


def _create_target_tables(specs: list[TableSpec]) -> None:
    """As the split's preparation does: the group's tables on the spare alias."""
    conn = connections[TARGET]
    with conn.cursor() as cursor:
        existing = set(conn.introspection.table_names(cursor))
    with conn.schema_editor() as editor:
        for spec in specs:
            if spec.table not in existing:
                editor.create_model(spec.model)


def _empty(alias: str, specs: list[Any]) -> None:
    for spec in reversed(specs):
        _sql(alias, f"DELETE FROM {spec.table}")


@dataclass
class Group:
    specs: list[TableSpec]
    moving: set[int]  # author ids whose rows move
    staying: list[int]  # author ids on the source that stay
    orm_moving: list[int]  # moving author ids the ORM routes to the source

    def moves(self, spec: Any, row: tuple) -> bool:
        return row[spec.key_index] in self.moving

    def stream(self, **kwargs: Any) -> ChangeStream:
        return ChangeStream(SOURCE, TARGET, self.specs, self.moves, **kwargs)

    def copy(self, source_conn: Any) -> None:
        """The copy phase, simplified: the moving rows as the snapshot sees them."""
        for spec in self.specs:
            columns = ", ".join(spec.columns)
            cursor = source_conn.cursor()
            cursor.execute(f"SELECT {columns} FROM {spec.table}")
            rows = [r for r in cursor.fetchall() if r[spec.key_index] in self.moving]
            if rows:
                marks = ", ".join(["%s"] * len(spec.columns))
                insert = f"INSERT INTO {spec.table} ({columns}) VALUES ({marks})"
                with connections[TARGET].cursor() as target:
                    target.executemany(insert, rows)

    def assert_target_holds_exactly_the_moving_rows(self) -> None:
        for spec in self.specs:
            expected = _table_rows(SOURCE, spec, self.moving)
            assert _table_rows(TARGET, spec) == expected, spec.table

    def target_state(self) -> list[list[tuple]]:
        return [_table_rows(TARGET, spec) for spec in self.specs]


@pytest.fixture
def group(transactional_db: None) -> Iterator[Group]:
    """Authors on the source with known ids (half of them move), each with posts and a
    follow, all written before the snapshot; the target's tables created and empty."""
    specs = group_tables("users")
    _create_target_tables(specs)
    shard_map = get_map("users")
    on_source = [k for k in range(5000, 5400) if shard_map.shard_for_key(k).name == SOURCE]
    base, orm_pool = on_source[:20], on_source[20:30]
    moving = set(base[::2]) | set(orm_pool[::2]) | {9_000_001, 9_000_002, 9_000_003}
    for pk in base:
        author = Author.objects.create(id=pk, email=f"a{pk}@example.org", name=f"A {pk}")
        Post.objects.create(author=author, title=f"first of {pk}")
        Post.objects.create(author=author, title=f"second of {pk}", likes=pk % 5)
        Follow.objects.create(follower=author, followee_id=base[0])
    yield Group(specs, moving, base[1::2], orm_pool[::2])
    _empty(TARGET, specs)


def _writes_after_the_snapshot(group: Group) -> None:
    """ORM writes and raw SQL writes on the source, touching moving and staying rows."""
    moved, stays = sorted(group.moving & set(range(5000, 5400))), group.staying
    # the ORM: creates, updates, a save, deletes (a cascade), a follow
    fresh = Author.objects.create(id=group.orm_moving[0], email="fresh@example.org")
    Post.objects.create(author=fresh, title="fresh post")
    Author.objects.filter(pk=moved[0]).update(score=F("score") + 7)
    author = Author.objects.get(pk=moved[1])
    author.name = "renamed ✓ émoji 🚀"
    author.joined = datetime.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=datetime.UTC)
    author.save()
    Author.objects.get(pk=moved[2]).delete()  # its posts and follows go first
    Author.objects.filter(pk=stays[0]).update(score=99)  # a staying row: not carried
    Follow.objects.create(follower_id=moved[3], followee_id=stays[0])
    # raw SQL behind the ORM's back, in multi-statement transactions
    now = "2025-01-02 03:04:05.123456"
    with connections[SOURCE].cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute(
            "INSERT INTO testapp_author (id, email, name, score, joined) VALUES "
            f"(9000001, 'raw1@example.org', '', 1, '{now}'), "
            f"(9000002, 'raw2@example.org', 'x', 2, '{now}'), "
            f"(9000004, 'stays@example.org', 'y', 3, '{now}')"
        )
        cursor.execute(
            "INSERT INTO testapp_post (id, author_id, title, likes, created) VALUES "
            f"(9100001, 9000001, 'raw post', 0, '{now}'), "
            f"(9100002, {stays[1]}, 'starts moving', 0, '{now}'), "
            f"(9100003, 9000002, 'stops moving', 0, '{now}')"
        )
        cursor.execute("COMMIT")
        cursor.execute("UPDATE testapp_post SET likes = likes + 1 WHERE author_id = %s", [moved[4]])
        cursor.execute("BEGIN")
        cursor.execute("UPDATE testapp_post SET author_id = 9000001 WHERE id = 9100002")
        cursor.execute(f"UPDATE testapp_post SET author_id = {stays[1]} WHERE id = 9100003")
        cursor.execute("COMMIT")
        # a primary key that changes (and stays moving), then a delete by raw SQL
        cursor.execute("UPDATE testapp_author SET id = 9000003 WHERE id = 9000002")
        cursor.execute("DELETE FROM testapp_post WHERE author_id = %s", [moved[5]])
    # the same server, another schema: a moving key there is none of the stream's business
    with connections[OTHER_SCHEMA_SAME_SERVER].cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_author (id, email, name, score, joined) VALUES "
            f"(9000001, 'elsewhere@example.org', '', 0, '{now}')"
        )


class TestOnTheTopology:
    pytestmark = online

    def test_catch_up_carries_orm_and_raw_writes_of_moving_rows_only(self, group):
        with snapshot(SOURCE) as (source_conn, gtid):
            group.copy(source_conn)
        assert gtid_reached(current_gtid(SOURCE), gtid)
        _writes_after_the_snapshot(group)
        end = current_gtid(SOURCE)  # others' tests may write on this server too: at least
        positions: list[str] = []
        result = group.stream().catch_up(gtid, on_transaction=positions.append)

        group.assert_target_holds_exactly_the_moving_rows()
        assert _sql(TARGET, "SELECT id FROM testapp_author WHERE id = 9000002") == []
        assert gtid_reached(result.position, end)
        # the last transaction wrote another schema of the server: read, not reported
        assert positions and not gtid_reached(positions[-1], end)
        assert [parse_gtid(p)[0][1] for p in positions] == sorted(
            {parse_gtid(p)[0][1] for p in positions}
        )  # one report per transaction, in order
        assert result.transactions_seen == len(positions) >= result.transactions_applied > 0
        assert result.events_seen > result.events_applied > 0
        assert ("testapp.Author", 9000003) in result.touched
        assert ("testapp.Author", group.staying[0]) not in result.touched
        assert result.last_timestamp is not None

        # replaying from the same GTID changes nothing
        before = group.target_state()
        again = group.stream().catch_up(gtid)
        assert group.target_state() == before
        assert gtid_reached(again.position, result.position)  # others may have written since
        assert again.transactions_applied == result.transactions_applied

    def test_values_round_trip_exactly(self, transactional_db):
        columns = (
            "id", "k", "d", "dt", "ts", "j", "t", "b", "vb", "f", "fl", "n", "dd", "tm", "u", "e"
        )  # fmt: skip
        ddl = (
            "CREATE TABLE stream_types (id BIGINT PRIMARY KEY, k INT NOT NULL, "
            "d DECIMAL(30, 10), dt DATETIME(6), ts TIMESTAMP(6) NULL, j JSON, t LONGTEXT, "
            "b LONGBLOB, vb VARBINARY(20), f DOUBLE, fl FLOAT, n INT NULL, dd DATE, "
            "tm TIME(6), u BIGINT UNSIGNED, e ENUM('red', 'green'))"
        )
        spec = _RawTable("stream_types", columns, "id", 1, "stream_types")
        for alias in (SOURCE, TARGET):
            _sql(alias, "DROP TABLE IF EXISTS stream_types")
            _sql(alias, ddl)
        try:
            gtid = current_gtid(SOURCE)
            rows = [
                (
                    1, 1, Decimal("-12345678901234567890.0123456789"),
                    datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
                    datetime.datetime(2030, 1, 1, 0, 0, 0, 1),
                    '{"a": [1, 2.5, null, "é"], "b": {"c": true}}', "text ✓ 🚀 " * 1000,
                    bytes(range(256)) * 10, b"\x00\xff\x80 bin", 0.1, 1.5, None,
                    datetime.date(1999, 12, 31), datetime.time(13, 14, 15, 161718),
                    2**64 - 1, "green",
                ),
                (2, 1) + (None,) * 14,
                (3, 2, Decimal("1"), None, None, "[]", "", b"", b"", -0.0, 0.0, 0, None, None,
                 0, "red"),
            ]  # fmt: skip
            marks = ", ".join(["%s"] * len(columns))
            with connections[SOURCE].cursor() as cursor:
                cursor.execute("SELECT @@session.time_zone")
                (time_zone,) = cursor.fetchone()
                cursor.execute("SET SESSION time_zone = '+00:00'")
                cursor.executemany(f"INSERT INTO stream_types VALUES ({marks})", rows)
                cursor.execute("UPDATE stream_types SET n = 5, t = CONCAT(t, '!') WHERE id = 1")
                cursor.execute("DELETE FROM stream_types WHERE id = 3")
                cursor.execute("SET SESSION time_zone = %s", [time_zone])
            stream = ChangeStream(SOURCE, TARGET, [spec], lambda s, row: row[s.key_index] == 1)
            stream.catch_up(gtid)
            select = "SELECT * FROM stream_types ORDER BY id"
            assert _sql(TARGET, select) == _sql(SOURCE, select)
            assert [r[0] for r in _sql(TARGET, select)] == [1, 2]
            blob = "SELECT b FROM stream_types WHERE id = 1"
            assert _sql(TARGET, blob) == [(rows[0][7],)]
        finally:
            for alias in (SOURCE, TARGET):
                _sql(alias, "DROP TABLE IF EXISTS stream_types")

    def test_a_killed_stream_raises_and_resumes_from_the_last_recorded_position(self, group):
        with snapshot(SOURCE) as (source_conn, gtid):
            group.copy(source_conn)
        _writes_after_the_snapshot(group)
        _filler(SOURCE)  # more binlog than socket buffers hold: the kill cannot come too late
        Author.objects.filter(pk__in=group.orm_moving[1:3]).update(score=F("score") + 1)
        Author.objects.create(id=group.orm_moving[3], email="after@example.org")

        stream = group.stream()
        recorded: list[str] = []

        def kill_after_the_first(position: str) -> None:
            recorded.append(position)
            if len(recorded) == 1:
                _kill(stream.connection_id)

        with pytest.raises(StreamBroken, match="restart from the last recorded position"):
            stream.catch_up(gtid, on_transaction=kill_after_the_first)
        assert stream.connection_id is None
        assert not gtid_reached(recorded[-1], current_gtid(SOURCE))

        end = current_gtid(SOURCE)
        result = group.stream().catch_up(recorded[-1])
        assert gtid_reached(result.position, end)
        group.assert_target_holds_exactly_the_moving_rows()

    def test_a_binlog_ending_in_large_transactions_is_read_to_its_end(self, group):
        # mysql-replication's dump request left a stray byte on the server, whose close then
        # reset the connection and dropped the last events unread (1 run in 2 failed)
        with snapshot(SOURCE) as (source_conn, gtid):
            group.copy(source_conn)
        for _ in range(3):
            Author.objects.create(id=group.orm_moving.pop(), email="before@example.org")
            _filler(SOURCE)
            end = current_gtid(SOURCE)
            gtid = group.stream().catch_up(gtid).position
            assert gtid_reached(gtid, end)
        group.assert_target_holds_exactly_the_moving_rows()

    def test_a_stop_that_raises_leaves_every_reported_transaction_applied(self, group):
        with snapshot(SOURCE) as (source_conn, gtid):
            group.copy(source_conn)
        _writes_after_the_snapshot(group)
        recorded: list[str] = []

        class Interrupted(Exception):
            pass

        def stop() -> bool:
            if len(recorded) == 3:
                raise Interrupted
            return False

        with pytest.raises(Interrupted):
            group.stream().catch_up(gtid, on_transaction=recorded.append, stop=stop)
        assert len(recorded) == 3
        group.stream().catch_up(recorded[-1])
        group.assert_target_holds_exactly_the_moving_rows()

    def test_until_stops_right_after_the_transaction_that_reaches_it(self, group):
        with snapshot(SOURCE) as (source_conn, gtid):
            group.copy(source_conn)
        first = Author.objects.create(id=group.orm_moving[0], email="one@example.org")
        until = current_gtid(SOURCE)
        Author.objects.create(id=group.orm_moving[1], email="two@example.org")

        result = group.stream().catch_up(gtid, until=until)
        assert result.position == until
        ids = {pk for (pk,) in _sql(TARGET, "SELECT id FROM testapp_author")}
        assert first.pk in ids and group.orm_moving[1] not in ids
        # already there: nothing is read
        assert group.stream().catch_up(until, until=gtid).transactions_seen == 0
        group.stream().catch_up(result.position)
        group.assert_target_holds_exactly_the_moving_rows()

    def test_snapshot_sees_exactly_its_gtid(self, group):
        with snapshot(SOURCE) as (source_conn, gtid):
            Author.objects.create(id=group.orm_moving[0], email="later@example.org")
            cursor = source_conn.cursor()
            cursor.execute(
                "SELECT COUNT(*) FROM testapp_author WHERE id = %s", [group.orm_moving[0]]
            )
            assert cursor.fetchone() == (0,)
            assert not gtid_reached(gtid, current_gtid(SOURCE))
        assert transactions_behind(gtid, current_gtid(SOURCE)) >= 1

    def test_readers_get_distinct_server_ids_above_the_topologys(self, transactional_db):
        ids = {ChangeStream(SOURCE, TARGET, [], lambda s, r: True).server_id for _ in range(50)}
        assert len(ids) == 50 and min(ids) >= 2**31
        with pytest.raises(SplitError, match="server id"):
            ChangeStream(SOURCE, TARGET, [], lambda s, r: True, server_id=0)


@dataclass(frozen=True)
class _RawTable:
    table: str
    columns: tuple[str, ...]
    pk_column: str
    key_index: int
    label: str


def _filler(alias: str) -> None:
    """A transaction of ~40 MB in a table of no group, on the source's schema."""
    _sql(alias, "DROP TABLE IF EXISTS stream_filler")
    _sql(alias, "CREATE TABLE stream_filler (id INT PRIMARY KEY, b LONGBLOB)")
    with connections[alias].cursor() as cursor:
        for i in range(10):
            cursor.execute("INSERT INTO stream_filler VALUES (%s, REPEAT('x', 4000000))", [i])
    _sql(alias, "DROP TABLE stream_filler")


def _kill(connection_id: int | None) -> None:
    """KILL a connection as the operator, then wait until the server has ended it."""
    assert connection_id is not None
    conn = operator_connect(SOURCE)
    try:
        cursor = conn.cursor()
        cursor.execute(f"KILL CONNECTION {int(connection_id)}")
        deadline = time.monotonic() + 5
        while True:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
                [connection_id],
            )
            if cursor.fetchone() == (0,):
                break
            assert time.monotonic() < deadline, "the killed connection is still listed"
            time.sleep(0.02)
    finally:
        conn.close()
