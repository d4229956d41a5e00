"""Work on the catalog that tells "the catalog has no such table yet" (not migrated: a
normal state, with a default answer) from "the catalog failed" (an error to report).
Used by the shard map, the status, the metrics and the load flush."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, connections, transaction

from django_shards.conf import get_config


class CatalogUnreadable(Exception):
    """The catalog failed (unreachable, or an error other than its tables being absent)."""


def read_catalog(model: Any, read: Any, empty: Any) -> Any:
    """``read()`` (a query of ``model``'s table, or a write to it) on the catalog; ``empty``
    when the catalog has no such table (not migrated yet: for the map, version 1 from
    settings is then the map). Raises ``CatalogUnreadable`` on any other failure: the
    caller must not mistake a dead catalog for an empty one."""
    catalog = get_config().catalog
    conn = connections[catalog]
    try:
        if conn.in_atomic_block:
            with transaction.atomic(using=catalog):  # a savepoint: a failure stays local
                return read()
        return read()
    except DatabaseError as exc:
        error = exc
    try:
        with conn.cursor() as cursor:
            tables = conn.introspection.table_names(cursor)
    except DatabaseError:
        tables = None
    if tables is not None and model._meta.db_table not in tables:
        return empty
    raise CatalogUnreadable(f"catalog {catalog!r}: {error}") from error
