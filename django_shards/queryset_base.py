"""The base class of :class:`~django_shards.query.ShardedQuerySet`: Django's ``QuerySet``.

django-stubs declares the public ``QuerySet`` API only; the sharded queryset also extends
and calls a few of its private methods and attributes (the ones ``QuerySet`` subclasses
such as django-model-utils' use). They are declared here for the type checker, in one
place; at run time ``QuerySetBase`` is ``QuerySet`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models

__all__ = ["QuerySetBase"]

if TYPE_CHECKING:
    from typing import Self

    from django.db.models.query import BaseIterable
    from django.db.models.sql.query import Query

    class QuerySetBase(models.QuerySet[Any, Any]):
        _db: str | None
        _fields: tuple[str, ...] | None
        _prefetch_related_lookups: tuple[Any, ...]
        _iterable_class: type[BaseIterable[Any]]
        #: set by QuerySet.__init__; read on the routed path
        _deferred_filter: tuple[bool, tuple[Any, ...], dict[str, Any]] | None
        _query: Query

        def __getstate__(self) -> dict[str, Any]: ...
        def __setstate__(self, state: dict[str, Any]) -> None: ...
        def _chain(self) -> Self: ...
        def _clone(self) -> Self: ...
        def _update(self, values: Any, *args: Any, **kwargs: Any) -> Any: ...
        def _insert(self, objs: Any, *args: Any, **kwargs: Any) -> Any: ...
        def _extract_model_params(self, defaults: Any, **kwargs: Any) -> dict[str, Any]: ...

else:
    QuerySetBase = models.QuerySet
