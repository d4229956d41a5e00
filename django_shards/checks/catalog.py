"""The checks that read the catalog (tag ``database``): E030 and E031."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Tags, register

from django_shards import conf
from django_shards.checks.messages import TAG, configured_databases, error, group_obj

logger = logging.getLogger("django_shards.checks")


@register(Tags.database, TAG)
def check_catalog_agrees(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """E030 settings that place keys otherwise than the catalog, E031 aliases the catalog
    names that DATABASES lacks. Reads the catalog, so it runs only when asked for the
    catalog's database (``check --database``, ``migrate``); a catalog that cannot be read
    (not migrated yet, or down) is not this check's business."""
    from django.core.exceptions import ImproperlyConfigured
    from django.db import DatabaseError

    from django_shards import catalog

    try:
        config = conf.get_config()
    except ImproperlyConfigured:
        return []  # the settings checks say why
    if not databases or config.catalog not in databases:
        return []
    messages: list[CheckMessage] = []
    try:
        for name, group in config.groups.items():
            found = catalog.settings_disagreement(group)
            if found is None:
                continue
            version, differences = found
            messages.append(
                error(
                    "E030",
                    f"The settings of shard group {name!r} place keys otherwise than the "
                    f"catalog's map (version {version}): {'; '.join(differences)}. Routing "
                    "follows the catalog; these settings would strand existing rows.",
                    "Put the settings back as the catalog has them; to change placement, "
                    "split shards with `manage.py shard_split` (it moves the rows).",
                    group_obj(name),
                )
            )
        missing = catalog.missing_aliases(configured_databases())
    except (DatabaseError, ImproperlyConfigured) as exc:
        # what could be read; the catalog's failure shows when it is used
        logger.warning("checks E030/E031: the catalog %r cannot be read: %s", config.catalog, exc)
        return messages
    known = ", ".join(map(repr, configured_databases())) or "none"
    for alias, uses in sorted(missing.items()):
        where = "; ".join(
            f"{role} of shard {shard!r} of group {group!r}" for group, shard, role in uses
        )
        messages.append(
            error(
                "E031",
                f"Alias {alias!r} ({where} in the catalog's map) is not in DATABASES: queries "
                "routed to it fail.",
                f"Add {alias!r} to DATABASES (DATABASES has {known}); the catalog, not the "
                "settings, says which databases serve each shard.",
                group_obj(uses[0][0]),
            )
        )
    return messages
