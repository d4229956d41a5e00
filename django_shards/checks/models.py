"""Model checks (tag ``models``): the models that carry a ``ShardedManager`` (E011-E013)
and relations that would cross databases (E014, E015)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.core.checks import CheckMessage, Tags, register
from django.core.exceptions import FieldDoesNotExist
from django.db import models

from django_shards import conf, keys
from django_shards.checks.messages import SETTING, TAG, did_you_mean, error, type_name


@register(Tags.models, TAG)
def check_models(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E011-E015 for the models of ``app_configs`` (all installed apps when None)."""
    groups = _configured_groups()
    registered = {sk.model: sk for sk in keys.sharded_models()}
    messages: list[CheckMessage] = []
    for model in _models(app_configs, registered):
        sk = registered.get(model)
        if sk is not None:
            messages += _check_shard_key(sk, groups)
        if not model._meta.proxy:
            messages += _check_relations(model)
            messages += _check_many_to_many(model)
    return messages


def _configured_groups() -> frozenset[Any] | None:
    """The group names of the settings, or None when they cannot be read (E001/E002)."""
    raw = conf.merged_settings()
    groups = None if raw is None else raw["GROUPS"]
    return frozenset(groups) if isinstance(groups, Mapping) else None


def _models(
    app_configs: Sequence[AppConfig] | None, registered: Mapping[type[models.Model], Any]
) -> list[type[models.Model]]:
    """Installed models of the apps, plus the registered sharded models of those apps."""
    if app_configs is None:
        found = list(apps.get_models())
    else:
        found = [m for config in app_configs for m in config.get_models()]
    for model in registered:
        if app_configs is None or model._meta.app_config in app_configs:
            found.append(model)
    return [m for m in dict.fromkeys(found) if not (m._meta.abstract or m._meta.swapped)]


def _check_shard_key(sk: keys.ShardKey, groups: frozenset[Any] | None) -> list[CheckMessage]:
    model = sk.model
    label = model._meta.label
    messages: list[CheckMessage] = []
    if groups is not None and not (isinstance(sk.group, str) and sk.group in groups):
        names = ", ".join(map(repr, sorted(g for g in groups if isinstance(g, str)))) or "none"
        messages.append(
            error(
                "E011",
                f"{label} is sharded in group {sk.group!r}, which is not in "
                f"{SETTING}['GROUPS']{did_you_mean(sk.group, groups)}.",
                f"Add the group to GROUPS or fix ShardedManager(group=...) (groups: {names}).",
                model,
            )
        )
    try:
        field = sk.field
    except (FieldDoesNotExist, TypeError):
        field_names = [f.name for f in model._meta.concrete_fields]
        return [
            *messages,
            error(
                "E012",
                f"The shard key {sk.field_name!r} of {label} is not a field of the model"
                f"{did_you_mean(sk.field_name, field_names)}.",
                "Name a concrete field (or 'pk') in ShardedManager(key=...).",
                model,
            ),
        ]
    if field not in model._meta.concrete_fields:
        return [
            *messages,
            error(
                "E012",
                f"The shard key {sk.field_name!r} of {label} is not a column of the model's "
                f"table ({type_name(field)}).",
                "Name a concrete field (or 'pk') in ShardedManager(key=...).",
                model,
            ),
        ]
    if isinstance(field, models.AutoField):
        messages.append(
            error(
                "E013",
                f"The shard key {sk.field_name!r} of {label} is a {type_name(field)}: its value is "
                "only known after the insert, so the row cannot be routed.",
                "Use django_shards.SnowflakeField(primary_key=True), set when the instance is "
                "made.",
                model,
            )
        )
    return messages


def _group_of(model: Any) -> str | None:
    sk = keys.key_for_model(model)
    return None if sk is None else sk.group


def _placement(model: type[models.Model], group: str | None) -> str:
    where = "unsharded" if group is None else f"in group {group!r}"
    return f"{model._meta.label} ({where})"


def _check_relations(model: type[models.Model]) -> list[CheckMessage]:
    """E014: a database constraint between rows that live in different databases."""
    messages: list[CheckMessage] = []
    source = _group_of(model)
    for field in model._meta.local_fields:
        if not (field.many_to_one or field.one_to_one):
            continue
        target = field.related_model
        if not isinstance(target, type) or not getattr(field, "db_constraint", False):
            continue
        target_group = _group_of(target)
        if source == target_group:
            continue
        messages.append(
            error(
                "E014",
                f"{model._meta.label}.{field.name} links {_placement(model, source)} to "
                f"{_placement(target, target_group)}; their rows live in different databases, "
                "so the foreign key constraint cannot hold.",
                f"Pass db_constraint=False to {model._meta.label}.{field.name}.",
                field,
            )
        )
    return messages


def _check_many_to_many(model: type[models.Model]) -> list[CheckMessage]:
    """E015: an auto-created many-to-many table touching a sharded model.

    Django creates that table like an unsharded model (on the catalog), while one side of
    each row lives on a shard: declare the through model and shard it with the group.
    """
    messages: list[CheckMessage] = []
    for field in model._meta.local_many_to_many:
        through = field.remote_field.through
        if not isinstance(through, type) or not through._meta.auto_created:
            continue
        target = field.related_model
        groups = {_group_of(model), _group_of(target) if isinstance(target, type) else None}
        if groups == {None}:
            continue
        messages.append(
            error(
                "E015",
                f"{model._meta.label}.{field.name} is a many-to-many field with an "
                "auto-created through table, which Django would put on the catalog while the "
                "related rows live on shards.",
                "Declare an explicit through model with a ShardedManager in the same group "
                "(keyed like the rows it links), or use a ForeignKey.",
                field,
            )
        )
    return messages
