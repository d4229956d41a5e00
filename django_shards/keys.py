"""Which models are sharded, and how their shard key is read.

A model is sharded when it carries a :class:`~django_shards.ShardedManager`; the manager
registers the model's group and key field here when it is attached to the class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from django.db import models
from django.db.models.fields.related import RelatedField

from django_shards.strategies.base import canonical_key


@dataclass(eq=False)
class ShardKey:
    """A sharded model's group and key field (``key`` names a field; an FK means its id)."""

    model: type[models.Model]
    group: str
    field_name: str
    manager_name: str = field(default="objects")
    #: the fields with a lookup index (``ShardedManager(lookups=[...])``)
    lookups: tuple[str, ...] = ()

    @cached_property
    def field(self) -> models.Field:
        """The key field. Raises ``FieldDoesNotExist`` (reported by the checks)."""
        meta = self.model._meta
        if self.field_name == "pk":
            return meta.pk
        # the checks (E012) refuse a key that is not a concrete field
        return cast(models.Field, meta.get_field(self.field_name))

    @cached_property
    def attname(self) -> str:
        return self.field.attname

    @cached_property
    def is_pk(self) -> bool:
        return self.field.primary_key

    def value_of(self, instance: models.Model) -> Any:
        """The instance's key, normalised to the key field's Python type (None if unset).

        Reads the instance's ``__dict__``: a deferred or not yet assigned key is None,
        never a query.
        """
        return self.normalize(instance.__dict__.get(self.attname))

    @cached_property
    def column(self) -> str:
        return cast(str, self.field.column)  # a concrete field always has its column

    @cached_property
    def int_key(self) -> bool:
        """Whether the key's values are ints (an integer field, or an FK to one)."""
        return isinstance(self._target, models.IntegerField)

    @cached_property
    def _target(self) -> models.Field:
        """The field whose values the key takes: the key field, or the one its FK names."""
        field = self.field
        return field.target_field if isinstance(field, RelatedField) else field

    def normalize(self, value: Any) -> Any:
        """``"5"`` and ``5`` must place alike: coerce a key to the key field's Python type."""
        if value.__class__ is int and self.int_key:  # the common case, on every query
            return value
        value = canonical_key(value)
        if value is None:
            return None
        target = self._target
        if isinstance(value, int) and isinstance(target, models.IntegerField):
            return value
        return target.to_python(value)


_registry: dict[type[models.Model], ShardKey] = {}


def register(
    model: type[models.Model],
    group: str,
    field_name: str,
    manager_name: str,
    lookups: tuple[str, ...] = (),
) -> None:
    """Record that ``model`` is sharded in ``group`` by ``field_name`` (first manager wins)."""
    if model not in _registry:
        _registry[model] = ShardKey(model, group, field_name, manager_name, lookups)


def key_for_model(model: type[models.Model]) -> ShardKey | None:
    """The model's :class:`ShardKey`, or None for an unsharded model."""
    try:
        return _registry[model]
    except KeyError:
        concrete = model._meta.concrete_model
        if concrete is not model and concrete in _registry:
            return _registry[concrete]
        return None


def sharded_models() -> list[ShardKey]:
    """Every registered sharded model (proxies included)."""
    return list(_registry.values())
