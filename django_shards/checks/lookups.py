"""Lookup index checks: ``LOOKUP_ALIAS`` (E042, W005) and each model's
``ShardedManager(lookups=[...])`` (E040, E041, E043)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Tags, register
from django.core.exceptions import FieldDoesNotExist
from django.db import models

from django_shards import conf, keys
from django_shards.checks.messages import (
    SETTING,
    TAG,
    configured_databases,
    did_you_mean,
    error,
    is_alias,
    type_name,
    warning,
)

#: the field types a lookup indexes by their text (at most 255 characters)
INDEXABLE = (
    models.CharField,
    models.IntegerField,
    models.UUIDField,
    models.DateField,
    models.BooleanField,
)


@register(TAG)
def check_lookup_alias(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E042: ``LOOKUP_ALIAS`` must be a writable database; W005: no ``ATOMIC_REQUESTS``."""
    raw = conf.merged_settings()
    if raw is None or (raw.get("LOOKUP_ALIAS") is None and not _any_lookups()):
        return []
    databases = configured_databases()
    alias = raw["LOOKUP_ALIAS"] if raw.get("LOOKUP_ALIAS") is not None else raw["CATALOG"]
    hint = "Set LOOKUP_ALIAS to a primary alias of DATABASES, or leave it unset (the catalog)."
    if not (is_alias(alias) and alias in databases):
        return [
            error(
                "E042",
                f"{SETTING}['LOOKUP_ALIAS'] is {alias!r}, which is not an alias of DATABASES"
                f"{did_you_mean(alias, databases)}.",
                hint,
            )
        ]
    try:
        replicas = conf.get_config().replicas
    except Exception:  # noqa: BLE001 - malformed settings: reported by E001-E010
        replicas = frozenset()
    if alias in replicas:
        return [
            error(
                "E042",
                f"{SETTING}['LOOKUP_ALIAS'] {alias!r} is a shard's replica; the lookup "
                "indexes are written to.",
                hint,
            )
        ]
    if isinstance(databases[alias], dict) and databases[alias].get("ATOMIC_REQUESTS"):
        return [
            warning(
                "W005",
                f"The lookup indexes' database {alias!r} has ATOMIC_REQUESTS: a request that "
                "fails after writing a sharded row rolls its lookup entries back while the "
                "row stays, and lookups then miss that row.",
                "Turn ATOMIC_REQUESTS off for that alias, or give LOOKUP_ALIAS a database of "
                "its own; `manage.py shard_lookup_rebuild` repairs missing entries.",
            )
        ]
    return []


def _any_lookups() -> bool:
    return any(sk.lookups for sk in keys.sharded_models())


@register(Tags.models, TAG)
def check_lookups(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E040 unknown field, E041 the shard key itself, E043 a type that cannot be indexed."""
    messages: list[CheckMessage] = []
    for sk in keys.sharded_models():
        model = sk.model
        if app_configs is not None and model._meta.app_config not in app_configs:
            continue
        for name in sk.lookups:
            messages += _check_lookup(sk, name)
    return messages


def _check_lookup(sk: keys.ShardKey, name: Any) -> list[CheckMessage]:
    model = sk.model
    label = model._meta.label
    names = [f.name for f in model._meta.concrete_fields]
    try:
        field = model._meta.get_field(name)
    except (FieldDoesNotExist, TypeError):
        field = None
    if not isinstance(field, models.Field) or field not in model._meta.concrete_fields:
        return [
            error(
                "E040",
                f"The lookup {name!r} of {label} is not a column of the model"
                f"{did_you_mean(name, names)}.",
                "Name concrete fields in ShardedManager(lookups=[...]).",
                model,
            )
        ]
    try:
        key_field = sk.field
    except (FieldDoesNotExist, TypeError):
        key_field = None  # E012
    if field is key_field:
        return [
            error(
                "E041",
                f"The lookup {name!r} of {label} is its shard key: a filter on the key "
                "already routes to one shard.",
                "Remove it from ShardedManager(lookups=[...]).",
                model,
            )
        ]
    too_long = isinstance(field, models.CharField) and (field.max_length or 0) > 255
    unindexable = isinstance(field, models.ForeignObject | models.DateTimeField)
    if unindexable or not isinstance(field, INDEXABLE) or too_long:
        return [
            error(
                "E043",
                f"The lookup {name!r} of {label} is a {type_name(field)}"
                f"{' longer than 255 characters' if too_long else ''}, which a lookup index "
                "cannot hold.",
                "Look up text of at most 255 characters (CharField, EmailField, SlugField), "
                "integers, UUIDs, dates or booleans.",
                model,
            )
        ]
    return []
