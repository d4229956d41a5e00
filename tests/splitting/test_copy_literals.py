"""The online copy's rows as SQL literals (``django_shards.resharding.upsert``): the source
renders every row as the ``VALUES`` literal of an upsert, and writing that literal back
gives a row equal to the original in every column, whatever its type.

On the real topology: a table with every kind of column Django (and a hand-made schema)
can have is filled with edge values on s0, copied through the literals into a twin table
on s4, and compared column by column with NULL-safe, byte-exact equality on the target.
"""

from __future__ import annotations

import random
import struct

import pytest
from django.db import connections

from django_shards.resharding.upsert import BatchWriters, row_literal_sql
from tests.support.backend import MARIADB

pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.skipif(not MARIADB, reason="the literals are MariaDB SQL"),
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

SOURCE, TARGET = "s0", "s4"
TABLE = "copy_literals"
COLUMNS = {
    "id": "int NOT NULL PRIMARY KEY",
    "dbl": "double NULL",
    "flt": "float NULL",
    "dec": "decimal(30,10) NULL",
    "big": "bigint unsigned NULL",
    "tiny": "tinyint NULL",
    "blb": "longblob NULL",
    "vbin": "varbinary(16) NULL",
    "latin": "varchar(40) CHARACTER SET latin1 NULL",
    "txt": "longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL",
    "vc": "varchar(40) CHARACTER SET utf8mb4 NULL",
    "dt": "datetime(6) NULL",
    "ts": "timestamp(6) NULL DEFAULT NULL",
    "d": "date NULL",
    "t": "time(6) NULL",
    "bits": "bit(7) NULL",
    "js": "longtext NULL CHECK (json_valid(js))",
    "en": "enum('a','b''c','d\\\\e') NULL",
}
TEXTS = ["", "'", "\\", "\0", "\x1a", "a'b\"c\\d", "\n\r\t", "ünïcødé", "🎉 emoji", "%s %%"]
LATIN = ["", "café", "'", "\\", "\0", "ÿ"]


def random_double(rng: random.Random) -> float:
    while True:
        value = struct.unpack("d", rng.randbytes(8))[0]
        if value == value and abs(value) != float("inf"):
            return float(value)


def rows(count: int) -> list[tuple[object, ...]]:
    rng = random.Random(11)
    edge_doubles = [0.1 + 0.2, 1e308, 5e-324, -0.0, 1 / 3, float(2**53 + 1), 123456789.123456789]
    made: list[tuple[object, ...]] = []
    for i in range(count):
        dbl = edge_doubles[i] if i < len(edge_doubles) else random_double(rng)
        made.append(
            (
                i,
                dbl,
                rng.uniform(-1e30, 1e30),
                f"{rng.randint(-(10**19), 10**19)}.{rng.randint(0, 10**10 - 1):010d}",
                rng.choice([0, 2**64 - 1, rng.randint(0, 2**64 - 1)]),
                rng.randint(-128, 127),
                rng.randbytes(rng.randint(0, 40)),
                rng.randbytes(rng.randint(0, 16)),
                rng.choice(LATIN),
                "".join(rng.choices(TEXTS, k=4)),
                rng.choice(TEXTS),
                f"20{rng.randint(0, 37):02d}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} "
                f"0{rng.randint(0, 9)}:3{rng.randint(0, 9)}:00.{rng.randint(0, 999999):06d}",
                f"2021-03-28 02:3{rng.randint(0, 9)}:00.{rng.randint(0, 999999):06d}",
                f"19{rng.randint(10, 99)}-12-31",
                f"-838:59:59.{rng.randint(0, 999999):06d}" if i % 7 == 0 else "12:00:00",
                rng.randint(0, 127),
                '{"k": "' + rng.choice(["x", '\\"q\\"', "\\\\", "é"]) + '", "n": [1, 2.5]}',
                rng.choice(["a", "b'c", "d\\e"]),
            )
        )
    made.append((count,) + (None,) * (len(COLUMNS) - 1))  # every column NULL
    return made


@pytest.fixture
def tables():
    ddl = f"CREATE TABLE {TABLE} ({', '.join(f'`{c}` {t}' for c, t in COLUMNS.items())})"
    for alias in (SOURCE, TARGET):
        with connections[alias].cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
            cursor.execute(ddl)
    yield
    for alias in (SOURCE, TARGET):
        with connections[alias].cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


class Spec:
    table = TABLE
    columns = tuple(COLUMNS)


def copy_through_literals() -> int:
    source = connections[SOURCE]
    source.ensure_connection()
    raw = source.connection
    with raw.cursor() as cursor:
        cursor.execute("SET SESSION time_zone = '+00:00'")
        cursor.execute(f"SELECT {row_literal_sql(raw, Spec)} FROM {TABLE} ORDER BY id")
        literals = [literal for (literal,) in cursor.fetchall()]
    with BatchWriters(TARGET, Spec) as writers:
        for start in range(0, len(literals), 97):
            writers.submit(b",".join(literals[start : start + 97])).result()
    return len(literals)


def fingerprint(alias: str) -> list[tuple[object, ...]]:
    """Every row of the table on ``alias``, each column as text that differs whenever the
    stored values differ: bytes in hexadecimal, a float through double (whose text form
    is the shortest that reads back to the same bits), times and numbers as printed."""

    def exact(column: str) -> str:
        kind = COLUMNS[column]
        if "char" in kind or "text" in kind or "blob" in kind or "binary" in kind:
            return f"HEX(`{column}`)"
        if column == "flt":
            return f"CAST(CAST(`{column}` AS DOUBLE) AS CHAR)"
        if column == "bits":
            return f"CAST(`{column}` + 0 AS CHAR)"
        return f"CAST(`{column}` AS CHAR)"

    with connections[alias].cursor() as cursor:
        cursor.execute("SET SESSION time_zone = '+00:00'")
        cursor.execute(f"SELECT {', '.join(exact(c) for c in COLUMNS)} FROM {TABLE} ORDER BY id")
        return list(cursor.fetchall())


def test_every_column_type_is_copied_exactly_through_its_literal(tables):
    made = rows(600)
    placeholders = ", ".join(["%s"] * len(COLUMNS))
    with connections[SOURCE].cursor() as cursor:
        cursor.execute("SET SESSION time_zone = '+00:00'")
        cursor.executemany(f"INSERT INTO {TABLE} VALUES ({placeholders})", made)
    assert copy_through_literals() == len(made)

    source, copy = fingerprint(SOURCE), fingerprint(TARGET)
    assert len(copy) == len(made)
    mismatched = {
        column: sum(1 for a, b in zip(source, copy, strict=True) if a[i] != b[i])
        for i, column in enumerate(COLUMNS)
    }
    assert {column: n for column, n in mismatched.items() if n} == {}


def test_a_single_precision_float_keeps_every_bit(tables):
    # the server prints a FLOAT with 6 digits: 0.1f would come back as another float
    with connections[SOURCE].cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (id, flt) VALUES (1, 0.1), (2, 16777217), (3, 3.4e38)")
    copy_through_literals()
    with connections[SOURCE].cursor() as cursor:
        cursor.execute(f"SELECT id, CAST(flt AS DOUBLE) FROM {TABLE} ORDER BY id")
        source_values = cursor.fetchall()
    with connections[TARGET].cursor() as cursor:
        cursor.execute(f"SELECT id, CAST(flt AS DOUBLE) FROM {TABLE} ORDER BY id")
        assert cursor.fetchall() == source_values


def test_a_batch_is_an_upsert_that_overwrites_a_row_already_there(tables):
    with connections[SOURCE].cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (id, vc) VALUES (1, 'new'), (2, NULL)")
    with connections[TARGET].cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (id, vc, big) VALUES (1, 'old', 7), (2, 'x', 8)")
    copy_through_literals()
    with connections[TARGET].cursor() as cursor:
        cursor.execute(f"SELECT id, vc, big FROM {TABLE} ORDER BY id")
        assert cursor.fetchall() == ((1, "new", None), (2, None, None))


def test_a_column_missing_on_the_source_is_named():
    class Missing:
        table = "django_shards_splitjob"
        columns = ("id", "no_such_column")

    source = connections["default"]
    source.ensure_connection()
    with pytest.raises(LookupError, match="no_such_column"):
        row_literal_sql(source.connection, Missing)
