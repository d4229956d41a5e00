"""Settings checks against ``DATABASES`` and ``DATABASE_ROUTERS``: unknown aliases (E004),
an alias used twice (E005), a replica that is a primary (E006), a replica's test MIRROR
(E007), the catalog alias (E008), the router (W002) and GTID tracking (W003)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage
from django.utils.module_loading import import_string

from django_shards.checks.groups import ShardEntry
from django_shards.checks.messages import (
    SETTING,
    did_you_mean,
    error,
    group_obj,
    is_alias,
    warning,
)

ROUTER_PATH = "django_shards.router.ShardRouter"

logger = logging.getLogger("django_shards.checks")


def _where(e: ShardEntry) -> str:
    return f"shard {e.name!r} of group {e.group!r}"


def check_aliases(
    entries: Sequence[ShardEntry], databases: Mapping[str, Any]
) -> list[CheckMessage]:
    """E004 unknown aliases, E005 duplicates in a group, E006 replica/primary, E007 MIRROR."""
    messages: list[CheckMessage] = []
    primaries: dict[str, list[ShardEntry]] = {}
    replicas: dict[str, list[ShardEntry]] = {}
    for e in entries:
        primaries.setdefault(e.primary, []).append(e)
        for alias in dict.fromkeys(e.replicas):
            replicas.setdefault(alias, []).append(e)

    known = ", ".join(map(repr, databases)) or "none"
    for alias in sorted((primaries.keys() | replicas.keys()) - databases.keys()):
        uses = [f"PRIMARY of {_where(e)}" for e in primaries.get(alias, ())]
        uses += [f"REPLICAS of {_where(e)}" for e in replicas.get(alias, ())]
        first = (primaries.get(alias) or replicas[alias])[0]
        messages.append(
            error(
                "E004",
                f"Alias {alias!r} ({'; '.join(uses)}) is not in DATABASES"
                f"{did_you_mean(alias, databases)}.",
                f"Add {alias!r} to DATABASES or fix the alias (DATABASES has {known}).",
                group_obj(first.group),
            )
        )

    by_group: dict[Any, list[ShardEntry]] = {}
    for e in entries:
        by_group.setdefault(e.group, []).append(e)
    for group, shards in by_group.items():
        messages += _check_duplicates(group, shards)

    for alias in sorted(replicas.keys() & primaries.keys()):
        as_replica, as_primary = replicas[alias][0], primaries[alias][0]
        messages.append(
            error(
                "E006",
                f"Alias {alias!r} is a replica ({_where(as_replica)}) and a primary "
                f"({_where(as_primary)}).",
                "Writes would go to a replica: give each replica its own DATABASES alias.",
                group_obj(as_replica.group),
            )
        )

    for alias, shards in replicas.items():
        if alias in databases and alias not in primaries:  # a primary too: E006 says so
            messages += _check_mirror(alias, shards, databases[alias])
    return messages


def _check_duplicates(group: Any, shards: Sequence[ShardEntry]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    names: set[str] = set()
    owners: dict[str, str] = {}  # alias -> the first shard of the group using it
    for e in shards:
        if e.name in names:
            messages.append(
                error(
                    "E005",
                    f"Shard NAME {e.name!r} appears twice in group {group!r}.",
                    "Give every shard of a group its own NAME.",
                    group_obj(group),
                )
            )
        names.add(e.name)
        seen_here: set[str] = set()
        for alias in (e.primary, *e.replicas):
            if alias in seen_here:
                if alias != e.primary:
                    messages.append(
                        error(
                            "E005",
                            f"Shard {e.name!r} of group {group!r} lists replica {alias!r} twice.",
                            "List each replica alias once.",
                            group_obj(group),
                        )
                    )
                continue
            seen_here.add(alias)
            owner = owners.setdefault(alias, e.name)
            if owner != e.name:
                messages.append(
                    error(
                        "E005",
                        f"Alias {alias!r} is used by shards {owner!r} and {e.name!r} of group "
                        f"{group!r}.",
                        "Each shard of a group needs its own databases: one alias, one shard.",
                        group_obj(group),
                    )
                )
    return messages


def _check_mirror(alias: str, shards: Sequence[ShardEntry], database: Any) -> list[CheckMessage]:
    """E007: a replica's test database must mirror its shard's primary."""
    test = database.get("TEST") if isinstance(database, Mapping) else None
    mirror = test.get("MIRROR") if isinstance(test, Mapping) else None
    expected = [p for p in dict.fromkeys(e.primary for e in shards) if p != alias]
    if not expected or expected == [mirror]:
        return []  # listed as its own shard's replica: E005/E006 report that
    where = f"Replica {alias!r} of {'; '.join(_where(e) for e in shards)}"
    if len(expected) > 1:
        msg = f"{where} serves different primaries ({', '.join(map(repr, expected))})."
    elif mirror is None:
        msg = f"{where} has no TEST['MIRROR'] in DATABASES."
    else:
        msg = f"{where} mirrors {mirror!r}, not its shard's primary {expected[0]!r}."
    return [
        error(
            "E007",
            msg,
            f'Set DATABASES[{alias!r}]["TEST"] = {{"MIRROR": {expected[0]!r}}} so tests read '
            "the primary's test database (a replica follows exactly one primary).",
            group_obj(shards[0].group),
        )
    ]


def check_catalog_alias(
    catalog: Any, entries: Sequence[ShardEntry], databases: Mapping[str, Any]
) -> list[CheckMessage]:
    hint = "Set CATALOG to a primary alias of DATABASES (usually 'default')."
    if not (is_alias(catalog) and catalog in databases):
        return [
            error(
                "E008",
                f"{SETTING}['CATALOG'] is {catalog!r}, which is not an alias of DATABASES"
                f"{did_you_mean(catalog, databases)}.",
                hint,
            )
        ]
    for e in entries:
        if catalog in e.replicas:
            return [
                error(
                    "E008",
                    f"{SETTING}['CATALOG'] {catalog!r} is a replica (shard {e.name!r} of group "
                    f"{e.group!r}); the catalog is written to.",
                    hint,
                )
            ]
    return []


def _is_shard_router(entry: Any) -> bool:
    if isinstance(entry, str):
        if entry == ROUTER_PATH:
            return True
        try:
            entry = import_string(entry)
        except Exception as exc:  # noqa: BLE001 - Django reports it when it routes
            logger.debug("DATABASE_ROUTERS entry %r cannot be imported: %r", entry, exc)
            return False
    cls = entry if isinstance(entry, type) else type(entry)
    return any(f"{c.__module__}.{c.__qualname__}" == ROUTER_PATH for c in cls.__mro__)


def check_router(groups: Any) -> list[CheckMessage]:
    if not (isinstance(groups, Mapping) and groups):
        return []
    routers = getattr(settings, "DATABASE_ROUTERS", None)
    if isinstance(routers, (list, tuple)) and any(_is_shard_router(r) for r in routers):
        return []
    return [
        warning(
            "W002",
            f"DATABASE_ROUTERS does not contain {ROUTER_PATH!r}, but {SETTING} has groups; "
            "save(), delete(), related objects and migrate are not routed to shards.",
            f"Add {ROUTER_PATH!r} to DATABASE_ROUTERS.",
            "DATABASE_ROUTERS",
        )
    ]


def check_gtid(
    mode: Any, entries: Sequence[ShardEntry], databases: Mapping[str, Any]
) -> list[CheckMessage]:
    if mode != "gtid":
        return []
    not_mysql = sorted(
        {
            alias
            for e in entries
            for alias in e.replicas
            if alias in databases and "mysql" not in _engine(databases[alias])
        }
    )
    if not not_mysql:
        return []
    return [
        warning(
            "W003",
            f"READ_YOUR_WRITES is 'gtid' but replicas {', '.join(map(repr, not_mysql))} are not "
            "MySQL/MariaDB; reads after a write fall back to the time window there.",
            "Use MariaDB replicas for GTID tracking, or set READ_YOUR_WRITES to 'time'.",
        )
    ]


def _engine(database: Any) -> str:
    engine = database.get("ENGINE") if isinstance(database, Mapping) else None
    return engine if isinstance(engine, str) else ""
