"""The database router: thin, follows Django's contract exactly.

Built with no arguments; every method takes ``**hints``; answers ``None`` ("no opinion")
for unsharded models. The sharded queryset does most routing itself (from its filters);
this router covers what Django routes through hints: ``save()``, ``delete()``, related
objects and relation checks.
"""

from __future__ import annotations

import functools
from typing import Any

from django.apps import apps
from django.db import models

from django_shards.conf import get_config
from django_shards.exceptions import CrossShardRelation, ShardKeyRequired
from django_shards.keys import key_for_model
from django_shards.routing import instance_shard, read_alias, write_alias, write_shard
from django_shards.shardmap import get_map


class ShardRouter:
    """Routes sharded models to their shard's primary (writes) or a replica (reads)."""

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        sk = key_for_model(model)
        instance = hints.get("instance")
        if sk is None or instance is None:
            return None
        shard = instance_shard(instance, group=sk.group)
        return None if shard is None else read_alias(shard)

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        sk = key_for_model(model)
        instance = hints.get("instance")
        if sk is None or instance is None:
            return None
        if type(instance) is model:
            # the object being written: it must name its key
            try:
                return write_alias(write_shard(instance), pin=False)
            except ShardKeyRequired:
                # Django also asks while validating unsaved objects whose key comes later
                # (an inline formset's rows); the insert itself refuses a keyless row.
                return None
        shard = instance_shard(instance, group=sk.group)
        return None if shard is None else write_alias(shard, pin=False)

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        k1, k2 = key_for_model(type(obj1)), key_for_model(type(obj2))
        if k1 is None and k2 is None:
            return None
        if k1 is None or k2 is None or k1.group != k2.group:
            # a reference between placements: allowed, the checks demand db_constraint=False
            return True
        if _declared_cross_shard(type(obj1), type(obj2)):
            # e.g. Follow.followee: db_constraint=False says the rows may live apart
            return True
        s1, s2 = instance_shard(obj1), instance_shard(obj2)
        if s1 is None or s2 is None or s1.name == s2.name:
            return True
        raise CrossShardRelation(
            f"{obj1._meta.label} {obj1.pk!r} lives on shard {s1.name!r} and "
            f"{obj2._meta.label} {obj2.pk!r} on shard {s2.name!r} of group {k1.group!r}; "
            "related rows of one group must share a shard key."
        )

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        config = get_config()
        if db in config.replicas:
            return False
        if app_label == "django_shards":
            if model_name == "lookupentry":
                return db == config.lookup_alias
            return db == config.catalog
        groups_of = _groups_by_primary()
        if model_name is None:
            return False if db in groups_of and not _app_has_sharded(app_label) else None
        try:
            model = apps.get_model(app_label, model_name)
        except LookupError:
            return False if db in groups_of else None
        sk = key_for_model(model)
        if sk is None:
            return False if db in groups_of else None
        return sk.group in groups_of.get(db, ())


@functools.cache
def _declared_cross_shard(m1: type[models.Model], m2: type[models.Model]) -> bool:
    """True when a foreign key between the two models has ``db_constraint=False``."""
    c1, c2 = m1._meta.concrete_model, m2._meta.concrete_model

    def loose(src: type[models.Model] | None, dst: type[models.Model] | None) -> bool:
        return src is not None and any(
            isinstance(f, models.ForeignKey)  # a concrete many-to-one or one-to-one
            and isinstance(f.related_model, type)
            and f.related_model._meta.concrete_model is dst
            and not f.db_constraint  # type: ignore[attr-defined]  # public, not in the stubs
            for f in src._meta.concrete_fields
        )

    return loose(c1, c2) or loose(c2, c1)


def _groups_by_primary() -> dict[str, set[str]]:
    """alias -> the groups it is a shard primary of, from settings and current maps."""
    config = get_config()
    out: dict[str, set[str]] = {alias: set(groups) for alias, groups in config.primaries.items()}
    for name in config.groups:
        for shard in get_map(name).shards.values():
            out.setdefault(shard.primary, set()).add(name)
    return out


def _app_has_sharded(app_label: str) -> bool:
    try:
        app = apps.get_app_config(app_label)
    except LookupError:
        return False
    return any(key_for_model(m) is not None for m in app.get_models())
