"""SQL for "the rows a shard owns": the pieces strategies build ``ownership_q`` from.

A hashing strategy's point is a digest of the key's canonical text, so SQL computes the
same digest from the key column (``MD5``/``SHA1`` of ``CAST(key AS CHAR)``, as hex) and
compares it, as fixed-width lowercase hex text, with the interval bounds written the same
way: string order is then numeric order. Django's own functions compile this on MariaDB
and MySQL, and on SQLite (Django registers ``MD5`` and ``SHA1`` on every SQLite connection).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import CharField, F, Func, Q
from django.db.models.expressions import Combinable
from django.db.models.functions import Cast
from django.db.models.lookups import GreaterThanOrEqual, LessThan

__all__ = ["CodePointOrder", "hex_intervals_q", "key_text", "merged", "nothing_q"]


def key_text(field: str) -> Cast:
    """The key column as text: ``str(key)`` for an int key, the string itself for a str key
    (the canonical text, before UTF-8; on MariaDB the connection charset must be utf8mb4
    for keys outside the Basic Multilingual Plane, as Django's tests' settings have it)."""
    return Cast(F(field), CharField())


def nothing_q(field: str) -> Q:
    """A Q no row matches (Django answers it without asking the database)."""
    return Q(**{f"{field}__in": []})


def merged(intervals: Iterable[tuple[Any, Any]]) -> list[list[Any]]:
    """Intervals ``[lo, hi)`` sorted by ``lo``, adjacent ones joined (``None``: unbounded)."""
    out: list[list[Any]] = []
    for lo, hi in intervals:
        if out and out[-1][1] is not None and lo is not None and out[-1][1] == lo:
            out[-1][1] = hi
        else:
            out.append([lo, hi])
    return out


def hex_intervals_q(
    point: Combinable, intervals: Iterable[tuple[int, int]], *, width: int, space: int, field: str
) -> Q:
    """Rows whose ``point`` (lowercase hex text of ``width`` digits) lies in one of the
    sorted ``intervals`` ``[lo, hi)`` of ``[0, space)``.

    Bounds become ``width``-digit lowercase hex; ``lo == 0`` and ``hi == space`` are left
    out (nothing lies beyond them). An empty list matches nothing; ``[0, space)`` everything.
    """
    q = Q()
    parts = merged(intervals)
    if not parts:
        return nothing_q(field)
    for lo, hi in parts:
        part = Q()
        if lo > 0:
            part &= Q(GreaterThanOrEqual(point, f"{lo:0{width}x}"))
        if hi < space:
            part &= Q(LessThan(point, f"{hi:0{width}x}"))
        if not part:  # the whole space
            return Q()
        q |= part
    return q


class CodePointOrder(Func):
    """A text expression that compares as Python compares ``str``: by code point.

    SQLite's default ``BINARY`` collation already does; MariaDB and MySQL compare the
    UTF-8 bytes (``CAST(... AS BINARY)``, which also keeps trailing spaces significant);
    PostgreSQL uses the ``C`` collation.
    """

    arity = 1
    output_field = CharField()
    template = "%(expressions)s"

    def as_mysql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="CAST(%(expressions)s AS BINARY)")

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template='(%(expressions)s) COLLATE "C"')
