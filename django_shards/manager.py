"""The sharded manager: declares a model's group and shard key."""

from __future__ import annotations

from django.db import models
from django.db.models.manager import BaseManager
from django.db.models.query import ModelIterable

from django_shards import keys
from django_shards.evaluation import ShardedModelIterable, sharded_iterable
from django_shards.query import ShardedQuerySet


class ShardedManager(BaseManager.from_queryset(ShardedQuerySet)):  # type: ignore[misc]
    """``objects = ShardedManager(group="users", key="author")``.

    ``key`` names a field (a foreign key means its ``_id`` column; ``"pk"`` the primary
    key). The first ``ShardedManager`` of a model also becomes its base manager, so that
    Django's internal lookups (foreign-key descriptors, ``refresh_from_db``) route too.
    """

    def __init__(self, group: str | None = None, key: str | None = None) -> None:
        super().__init__()
        self.group = group
        self.key = key

    def get_queryset(self) -> ShardedQuerySet:
        """A new queryset whose rows come back through a ``ShardedIterable``.

        Django's ``get_queryset()``, written out: this runs on every query.
        """
        qs = self._queryset_class(model=self.model, using=self._db, hints=self._hints)
        cls = qs._iterable_class
        qs._iterable_class = ShardedModelIterable if cls is ModelIterable else sharded_iterable(cls)
        return qs

    def contribute_to_class(self, cls: type[models.Model], name: str) -> None:
        super().contribute_to_class(cls, name)
        if self.group is None or cls._meta.abstract:
            return
        keys.register(cls, self.group, self.key or "pk", name)
        if not cls._meta.base_manager_name and "base_manager" not in cls._meta.__dict__:
            cls._meta.base_manager_name = name
