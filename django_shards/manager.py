"""The sharded manager: declares a model's group and shard key."""

from __future__ import annotations

from django.db import models
from django.db.models.manager import BaseManager
from django.db.models.query import ModelIterable

from django_shards import keys
from django_shards.evaluation import ShardedModelIterable, sharded_iterable
from django_shards.options import with_consistency
from django_shards.query import ShardedQuerySet


class ShardedManager(BaseManager.from_queryset(ShardedQuerySet)):  # type: ignore[misc]
    """``objects = ShardedManager(group="users", key="author")``.

    ``key`` names a field (a foreign key means its ``_id`` column; ``"pk"`` the primary
    key). The first ``ShardedManager`` of a model also becomes its base manager, so that
    Django's internal lookups (foreign-key descriptors, ``refresh_from_db``) route too.
    ``lookups`` names fields with a lookup index (:mod:`django_shards.lookups`): a filter on
    one of them reads the index, then only the shards that hold its rows.
    """

    def __init__(
        self,
        group: str | None = None,
        key: str | None = None,
        lookups: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.group = group
        self.key = key
        self.lookups = tuple(lookups or ())

    def get_queryset(self) -> ShardedQuerySet:
        """A new queryset whose rows come back through a ``ShardedIterable``.

        Django's ``get_queryset()``, written out: this runs on every query.
        """
        qs = self._queryset_class(model=self.model, using=self._db, hints=self._hints)
        cls = qs._iterable_class
        qs._iterable_class = ShardedModelIterable if cls is ModelIterable else sharded_iterable(cls)
        return qs

    # ``Model.objects.strong()`` and ``eventual()``: the manager's new queryset is nobody
    # else's, so its consistency is set in place instead of on a clone (Django's
    # ``from_queryset`` proxy clones it once more); a ``get_queryset()`` or ``strong()``/
    # ``eventual()`` overridden in a subclass keeps the clone (its queryset may be shared)

    def strong(self) -> ShardedQuerySet:
        """Reads go to the primary (``ShardedQuerySet.strong``)."""
        return self._with_consistency("strong")

    def eventual(self) -> ShardedQuerySet:
        """Reads go to a usable replica (``ShardedQuerySet.eventual``)."""
        return self._with_consistency("eventual")

    def _with_consistency(self, level: str) -> ShardedQuerySet:
        if type(self).get_queryset is not ShardedManager.get_queryset:
            return getattr(self.get_queryset(), level)()
        qs = self.get_queryset()
        if getattr(type(qs), level) is not getattr(ShardedQuerySet, level):
            return getattr(qs, level)()
        qs._options = with_consistency(qs._options, level)
        return qs

    def contribute_to_class(self, cls: type[models.Model], name: str) -> None:
        super().contribute_to_class(cls, name)
        if self.group is None or cls._meta.abstract:
            return
        keys.register(cls, self.group, self.key or "pk", name, self.lookups)
        if not cls._meta.base_manager_name and "base_manager" not in cls._meta.__dict__:
            cls._meta.base_manager_name = name
