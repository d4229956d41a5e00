"""The catalog is the truth once data exists.

The first ``migrate`` of the catalog records version 1 of every group's map from settings
(:func:`record_initial_versions`, a ``post_migrate`` receiver). From then on routing follows
the stored versions (see :mod:`django_shards.shardmap`), and settings that would place keys
differently are reported by system check ``E030`` (:func:`placement_differences`), never
obeyed: nothing silently moves a key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from django.apps import apps as global_apps
from django.db import IntegrityError, connections, router, transaction

from django_shards.conf import BUILTIN_STRATEGIES, GroupSettings, get_config
from django_shards.models import ShardMapVersion
from django_shards.shardmap import ShardMap, map_from_row, map_from_settings, version_fields

logger = logging.getLogger("django_shards")

_SHORT_NAMES = {path: name for name, path in BUILTIN_STRATEGIES.items()}


def record_initial_versions(*, using: str, apps: Any = None, **kwargs: Any) -> None:
    """``post_migrate`` receiver: store version 1 of each group that has none yet.

    Runs on the catalog alias only, once its map table exists. Idempotent: a group whose
    version 1 is stored keeps it, whatever the settings say now. A group whose settings
    cannot be built (reported by the system checks) is skipped until a later ``migrate``.
    """
    from django_shards.checks.settings import check_settings

    config = get_config()
    if using != config.catalog or not router.allow_migrate(using, "django_shards"):
        return
    errors = [m for m in check_settings() if m.is_serious()]
    if errors:  # `migrate --skip-checks` with bad settings: record nothing wrong
        logger.warning(
            "shard maps not recorded: DJANGO_SHARDS has errors (%s); run `manage.py check`",
            ", ".join(sorted({m.id or "" for m in errors})),
        )
        return
    try:
        model = (apps or global_apps).get_model("django_shards", "ShardMapVersion")
    except LookupError:  # migrated backwards past the table
        return
    if "options" not in {f.name for f in model._meta.get_fields()}:
        return  # migrated to a state before versions stored their options
    conn = connections[using]
    with conn.cursor() as cursor:
        if model._meta.db_table not in conn.introspection.table_names(cursor):
            return
    rows = model.objects.using(using)
    recorded = set(rows.filter(version=1).values_list("group", flat=True))
    for name, group in config.groups.items():
        if name in recorded:
            continue
        try:
            fields = version_fields(map_from_settings(group))
        except Exception as exc:  # noqa: BLE001 - bad settings: the checks say why
            logger.warning("map of group %r not recorded (%r); run `manage.py check`", name, exc)
            continue
        try:
            with transaction.atomic(using=using):
                rows.create(**fields, note="version 1, recorded from settings at migrate")
        except IntegrityError:
            pass  # another process's migrate recorded it first: theirs stands


def stored_versions(group: str) -> tuple[Any, Any]:
    """``(version 1 row, latest row)`` of ``group`` in the catalog; either may be None.

    Raises ``DatabaseError`` when the catalog cannot be read (tables missing included).
    """
    rows = ShardMapVersion.objects.using(get_config().catalog).filter(group=group)
    return rows.filter(version=1).first(), rows.order_by("-version").first()


def _short(path: str) -> str:
    return _SHORT_NAMES.get(path, path)


def _jsonish(value: Any) -> Any:
    """``value`` as it reads back from a JSON column (tuples become lists, ...)."""
    return json.loads(json.dumps(value, default=str))


def placement_differences(settings_group: GroupSettings, stored: ShardMap) -> list[str]:
    """How the placement the settings describe differs from ``stored`` (empty: it agrees).

    Placement is the strategy, its options, the shard names, and what each shard owns
    (ranges, ring tokens, and for ``hash``/``modulo`` the order of the shards). Aliases are
    not placement: the catalog's route.
    """
    wanted = map_from_settings(settings_group)
    out = []
    wanted_path = settings_group.strategy
    stored_path = f"{type(stored.strategy).__module__}.{type(stored.strategy).__qualname__}"
    if wanted_path != stored_path:
        out.append(f"STRATEGY is {_short(wanted_path)!r}, the catalog's {_short(stored_path)!r}")
    elif _jsonish(wanted.strategy.options) != _jsonish(stored.strategy.options):
        out.append(
            f"OPTIONS are {dict(wanted.strategy.options)!r}, "
            f"the catalog's {dict(stored.strategy.options)!r}"
        )
    wanted_names, stored_names = list(wanted.shards), list(stored.shards)
    if not out and set(wanted_names) != set(stored_names):
        out.append(f"SHARDS are {', '.join(wanted_names)}, the catalog's {', '.join(stored_names)}")
    if not out and _jsonish(wanted.layout.to_json()) != _jsonish(stored.layout.to_json()):
        mine = wanted.strategy.describe(wanted.layout)
        theirs = stored.strategy.describe(stored.layout)
        changed = [
            f"{name} owns {mine.get(name) or '?'} in settings, {theirs.get(name) or '?'} "
            "in the catalog"
            for name in dict.fromkeys([*mine, *theirs])
            if mine.get(name) != theirs.get(name)
        ]
        if not changed and wanted_names != stored_names:
            changed = [
                f"SHARDS are in the order {', '.join(wanted_names)}, the catalog's "
                f"{', '.join(stored_names)} (with this strategy the order places keys)"
            ]
        out.append("; ".join(changed) or "the shards own different parts of the key space")
    return out


def settings_disagreement(settings_group: GroupSettings) -> tuple[int, list[str]] | None:
    """``(version, differences)`` when the settings of a group place keys otherwise than
    the catalog's version 1 and its current version; None when they agree with either or
    nothing is recorded. Raises ``DatabaseError`` when the catalog cannot be read."""
    first, latest = stored_versions(settings_group.name)
    candidates = [row for row in (first, latest) if row is not None]
    if not candidates:
        return None
    found: list[tuple[int, list[str]]] = []
    for row in candidates:
        differences = placement_differences(settings_group, map_from_row(row))
        if not differences:
            return None
        found.append((row.version, differences))
    return found[0]


def missing_aliases(databases: Mapping[str, Any]) -> dict[str, list[tuple[str, str, str]]]:
    """alias -> [(group, shard, role)] for aliases the catalog's current maps name but
    ``databases`` lacks. Raises ``DatabaseError`` when the catalog cannot be read."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    rows = ShardMapVersion.objects.using(get_config().catalog)
    for group in sorted(set(rows.values_list("group", flat=True))):
        latest = rows.filter(group=group).order_by("-version").only("shards").first()
        for shard in latest.shards if latest is not None else ():
            aliases = [(shard["primary"], "primary")]
            aliases += [(r, "replica") for r in shard.get("replicas") or ()]
            for alias, role in aliases:
                if alias not in databases:
                    out.setdefault(alias, []).append((group, shard["name"], role))
    return out
