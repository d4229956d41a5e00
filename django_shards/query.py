"""The sharded queryset: routes each query from the shard key found in its filters.

A query whose filters pin it to one shard runs there (the key is read from the compiled
WHERE tree: :mod:`django_shards.where`); ``range`` predicates under the range strategy
are pruned to the overlapping shards; anything else fans out and is merged
(:mod:`django_shards.evaluation`). Methods are in the order of Django's ``QuerySet``.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterable
from typing import Any, cast

from django.db import IntegrityError, models, transaction
from django.db.models import lookups
from django.db.models.expressions import Col

from django_shards import evaluation, key_changes, load, lookup_index
from django_shards.conf import Shard
from django_shards.context import validate_level
from django_shards.evaluation import ShardedIterable, sharded_iterable
from django_shards.exceptions import (
    NoShardForKey,
    ShardingError,
    ShardKeyRequired,
    ShardMoving,
)
from django_shards.fanout import apply_fanout_setting
from django_shards.keys import ShardKey, key_for_model
from django_shards.options import _NO_OPTIONS, _ONE_OPTION, _UNSET, _Options, with_consistency
from django_shards.queryset_base import QuerySetBase
from django_shards.replicas import primary_errors
from django_shards.routing import note_write, read_alias, write_alias, write_shard
from django_shards.shapes import named_aggregates
from django_shards.shardmap import ShardMap, get_map, registry
from django_shards.where import is_expression, keys_of, shards_from_query, shards_from_where

__all__ = ["ShardedQuerySet", "shards_from_where"]


class ShardedQuerySet(QuerySetBase):
    """A ``QuerySet`` that picks its database from the shard key in its filters."""

    #: routing options (for_key, on_shard, strong, fanout ...): one immutable value that
    #: every clone shares, so building a queryset costs one attribute copy
    _options: _Options = _NO_OPTIONS
    #: while an evaluation runs on the alias it chose, that alias (``db`` answers it)
    _running_on: str | None = None
    #: shards left out of the last fan-out of this queryset (with allow_partial())
    missing_shards: list[str] = []  # only ever replaced, never mutated
    #: the shard key the query was routed by, when it named one (its load's sample point)
    _routed_point: Any = None
    #: its shards came from a lookup index (lookup_index): it names keys, not a fan-out
    _lookup_routed: bool = False

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        cls = state["_iterable_class"]
        state["_iterable_class"] = getattr(cls, "row_iterable", cls)  # picklable
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._iterable_class = sharded_iterable(self._iterable_class)

    def _set_query(self, value: Any) -> None:
        models.QuerySet.query.fset(self, value)  # type: ignore[attr-defined]
        self._iterable_class = sharded_iterable(self._iterable_class)

    #: Django's getter (the hot path pays nothing); the setter keeps the iterable wrapped
    query = property(models.QuerySet.query.fget, _set_query)  # type: ignore[attr-defined]

    # -- methods that do database queries ------------------------------------------------

    def iterator(self, chunk_size: int | None = None) -> Any:
        """Streams rows; across shards, memory stays bounded by shards x ``chunk_size``."""
        shards = self._route()
        if shards is None or len(shards) <= 1:
            return super().iterator(chunk_size)
        return evaluation.stream(self, shards, chunk_size or 2000)

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        shards = self._route()
        if shards is None or len(shards) <= 1:
            return evaluation.read(
                self, shards, lambda: super(ShardedQuerySet, self).aggregate(*args, **kwargs)
            )
        return evaluation.aggregate(self, shards, named_aggregates(args, kwargs))

    def count(self) -> int:
        if self._result_cache is not None:
            return len(self._result_cache)
        shards = self._route()
        if shards is None or len(shards) <= 1:
            return evaluation.read(self, shards, super().count)
        return evaluation.count(self, shards)

    def create(self, **kwargs: Any) -> models.Model:
        """Create on the primary of the shard that owns the new row's key."""
        if not self._routes_itself:
            return super().create(**kwargs)
        obj = self.model(**kwargs)
        self._for_write = True
        obj.save(force_insert=True, using=write_alias(write_shard(obj), pin=False))
        return obj

    def bulk_create(self, objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> list:
        """Rows are grouped by shard; one batch per shard (not atomic across shards)."""
        objs = list(objs)
        if not self._routes_itself or not objs:  # nothing to route: Django checks the arguments
            run = functools.partial(super().bulk_create, objs, *args, **kwargs)
            created = lookup_index.bulk_create(self, objs, run)
            self._after_write(self._db)
            return created
        by_shard = self._by_shard(objs)
        lookup_index.bulk_create(self, objs, lambda: None)  # before any shard is written
        for alias, rows in by_shard.items():
            self.using(alias)._with(keys_checked=True).bulk_create(rows, *args, **kwargs)
        for obj in objs:  # bulk_create sends no post_save: the keys stored are these
            key_changes.remember_key(type(obj), obj)
        return objs

    def bulk_update(
        self, objs: Iterable[models.Model], fields: Any, *args: Any, **kwargs: Any
    ) -> int:
        objs = list(objs)
        if not self._routes_itself or not objs:
            run = functools.partial(super().bulk_update, objs, fields, *args, **kwargs)
            rows = lookup_index.bulk_update(self, objs, fields, run)
            self._after_write(self._db)
            return rows
        sk = self._shard_key
        assert sk is not None
        key_changes.check_bulk_unchanged(sk, objs)  # before any shard is written
        by_shard = self._by_shard(objs)
        return lookup_index.bulk_update(
            self,
            objs,
            fields,
            lambda: sum(
                self.using(db)._with(keys_checked=True).bulk_update(part, fields, *args, **kwargs)
                for db, part in by_shard.items()
            ),
        )

    def get_or_create(self, defaults: Any = None, **kwargs: Any) -> tuple[models.Model, bool]:
        if not self._routes_itself:
            return super().get_or_create(defaults, **kwargs)
        shard = self._single_write_shard(kwargs)
        if shard is not None:
            return self.using(write_alias(shard, pin=False)).get_or_create(defaults, **kwargs)
        # no key: find it wherever it is, else create where its new key belongs
        try:
            return self.strong().get(**kwargs), False
        except self.model.DoesNotExist:
            params = self._extract_model_params(defaults, **kwargs)
            try:
                return self.create(**params), True
            except IntegrityError:
                try:
                    return self.strong().get(**kwargs), False
                except self.model.DoesNotExist:
                    pass
                raise

    def update_or_create(
        self, defaults: Any = None, create_defaults: Any = None, **kwargs: Any
    ) -> tuple[models.Model, bool]:
        if not self._routes_itself:
            return super().update_or_create(defaults, create_defaults, **kwargs)
        shard = self._single_write_shard(kwargs)
        if shard is not None:
            return self.using(write_alias(shard, pin=False)).update_or_create(
                defaults, create_defaults, **kwargs
            )
        defaults = defaults or {}
        try:
            obj = self.strong().get(**kwargs)
        except self.model.DoesNotExist:
            params = self._extract_model_params(
                create_defaults if create_defaults is not None else defaults, **kwargs
            )
            return self.create(**params), True
        with transaction.atomic(using=write_alias(write_shard(obj), pin=False)):
            for name, value in (defaults or {}).items():
                setattr(obj, name, value() if callable(value) else value)
            obj.save()
        return obj, False

    def in_bulk(self, id_list: Any = None, *, field_name: str = "pk") -> dict[Any, Any]:
        """Like ``QuerySet.in_bulk``; ids of several shards are looked up on each of them."""
        if not self._routes_itself:
            return super().in_bulk(id_list, field_name=field_name)
        if id_list is not None:
            id_list = list(id_list)
        if self.query.is_sliced or (id_list is not None and not id_list):
            # Django's own checks and answer (no query), on any one shard
            pinned = self._with(shard_name=self._shard_map().owning_shards[0].name)
            return super(ShardedQuerySet, pinned).in_bulk(id_list, field_name=field_name)
        if id_list is not None:
            target = self.filter(**{f"{field_name}__in": id_list})
        else:
            target = self
        shards = target._target_shards()
        if len(shards) <= 1:
            if not shards:
                return {}
            pinned = self._with(shard_name=shards[0].name)
            return super(ShardedQuerySet, pinned).in_bulk(id_list, field_name=field_name)
        target._route()  # applies FANOUT (deny / warn)
        return evaluation.in_bulk(self, shards, id_list, field_name)

    def delete(self) -> tuple[int, dict[str, int]]:
        shards = self._target_shards() if self._routes_itself else None  # read once
        if shards is not None:
            self._check_writable(shards)
        shards = self._route(shards)
        if shards is None or len(shards) <= 1:
            alias = self._db if shards is None else shards[0].primary if shards else None
            started = time.perf_counter()
            with primary_errors(alias):
                deleted = super().delete()
            self._count_write(alias, deleted[0], started, self._routed_point)
            self._after_write(alias)
            return deleted
        return evaluation.delete(self, shards)

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def update(self, **kwargs: Any) -> int:
        self._check_key_not_updated(kwargs)
        sk = self._shard_key
        if sk is not None and sk.lookups and not self._options.keys_checked:
            run = self._with(keys_checked=True).update
            return lookup_index.update(self, kwargs, functools.partial(run, **kwargs))
        shards = self._target_shards() if self._routes_itself else None  # read once
        if shards is not None:
            self._check_writable(shards)
        shards = self._route(shards)
        if shards is None or len(shards) <= 1:
            alias = self._db if shards is None else shards[0].primary if shards else None
            started = time.perf_counter()
            with primary_errors(alias):
                rows = super().update(**kwargs)
            self._count_write(alias, rows, started, self._routed_point)
            self._after_write(alias)
            return rows
        return evaluation.update(self, shards, kwargs)

    update.alters_data = True  # type: ignore[attr-defined]

    def _update(self, values: Any, *args: Any, **kwargs: Any) -> Any:
        """``save()`` of an existing row runs this on the owner's primary (``using()``).

        Django 6.1 passes ``returning_fields`` too (then the rows come back, not a count).
        """
        started = time.perf_counter()
        with primary_errors(self._db):
            result = super()._update(values, *args, **kwargs)
        sk = self._shard_key
        if sk is not None:
            keys = keys_of(self.query, sk)
            point = next(iter(keys)) if keys is not None and len(keys) == 1 else None
            rows = result if isinstance(result, int) else len(result)
            self._count_write(self._db, rows, started, point)
        return result

    _update.alters_data = True  # type: ignore[attr-defined]
    _update.queryset_only = False  # type: ignore[attr-defined]

    def exists(self) -> bool:
        if self._result_cache is not None:
            return bool(self._result_cache)
        shards = self._route()
        if shards is None or len(shards) <= 1:
            return evaluation.read(self, shards, super().exists)
        return evaluation.exists(self, shards)

    # -- methods that return a new queryset ----------------------------------------------

    def values(self, *fields: Any, **expressions: Any) -> ShardedQuerySet:
        clone = cast("ShardedQuerySet", super().values(*fields, **expressions))
        clone._iterable_class = sharded_iterable(clone._iterable_class)
        return clone

    def values_list(self, *fields: Any, flat: bool = False, named: bool = False) -> Any:
        clone = super().values_list(*fields, flat=flat, named=named)
        clone._iterable_class = sharded_iterable(clone._iterable_class)
        return clone

    # choosing shard and consistency

    def for_key(self, key: Any) -> ShardedQuerySet:
        """A queryset pinned to the shard that owns ``key`` (no filter is added)."""
        return self._with(pinned_key=key, shard_name=None)

    def on_shard(self, name: str) -> ShardedQuerySet:
        """A queryset on one shard, by name. Raises ``UnknownShard``."""
        self._shard_map().shard_named(name)
        return self._with(shard_name=name, pinned_key=_UNSET)

    def strong(self) -> ShardedQuerySet:
        """Reads go to the primary."""
        clone = self._chain()
        clone._options = with_consistency(self._options, "strong")
        return clone

    def eventual(self) -> ShardedQuerySet:
        """Reads go to a usable replica (the primary when none is), pinned or not."""
        clone = self._chain()
        clone._options = with_consistency(self._options, "eventual")
        return clone

    def consistency(self, level: str) -> ShardedQuerySet:
        return self._with(consistency=validate_level(level))

    def fanout(self) -> ShardedQuerySet:
        """Explicitly allow this query to run on every shard it targets."""
        return self._with(fanout=True)

    def allow_partial(self) -> ShardedQuerySet:
        """In a fan-out, a failing shard is left out instead of raising ``FanoutError``."""
        return self._with(allow_partial=True)

    # -- introspection -------------------------------------------------------------------

    def target_shards(self) -> list[str]:
        """Names of the shards this queryset would run on (no query is run, except the
        read of a lookup index when the filters name looked-up values)."""
        return [s.name for s in self._target_shards()]

    @property
    def db(self) -> str:
        """The alias this query runs on: ``using()``'s when it names one of the group's
        databases, else the one its shard key routes to. Raises ``ShardKeyRequired`` when
        the query spans shards."""
        alias = self._running_on
        if alias is not None:
            return alias
        sk = key_for_model(self.model)
        if sk is None:
            return super().db
        db = self._db
        if db is not None and get_map(sk.group).shard_for_alias(db) is not None:
            return db
        shard = self._single_shard(self._target_shards())
        if self._for_write:
            return write_alias(shard, pin=False)
        return read_alias(shard, self._options.consistency)

    # -- private methods -----------------------------------------------------------------

    def _insert(self, objs: Any, *args: Any, **kwargs: Any) -> Any:
        """Refuse an insert of sharded rows into a database outside their group (a row
        saved without its key lands here with Django's ``default``)."""
        using = kwargs.get("using")
        sk = self._shard_key
        shard = None
        if sk is not None and using is not None:
            shard = self._shard_map().shard_for_alias(using)
            if shard is None:
                raise ShardKeyRequired(
                    f"{self.model._meta.label} has no shard key yet ({sk.field_name!r} is "
                    "unset), so it cannot be routed; set the key before saving."
                )
        started = time.perf_counter()
        with primary_errors(using):
            result = super()._insert(objs, *args, **kwargs)
        objs = list(objs)  # a batch of bulk_create, or save()'s one instance
        if shard is not None and objs and sk is not None:
            point = sk.value_of(objs[0] if len(objs) == 1 else random.choice(objs))
            self._count_write(using, len(objs), started, point)
        return result

    _insert.alters_data = True  # type: ignore[attr-defined]
    _insert.queryset_only = False  # type: ignore[attr-defined]  # managers need it: save()

    def _clone(self) -> ShardedQuerySet:
        clone = super()._clone()
        clone._options = self._options
        if not issubclass(clone._iterable_class, ShardedIterable):  # set by an application
            clone._iterable_class = sharded_iterable(clone._iterable_class)
        return clone

    def _with(self, **options: Any) -> ShardedQuerySet:
        """A clone with routing ``options`` (fields of :class:`_Options`) changed."""
        clone = self._chain()
        if self._options is _NO_OPTIONS and len(options) == 1:
            # strong(), eventual(), fanout() ... on a plain queryset: the common case, and
            # NamedTuple._replace costs a microsecond (few such options exist: one each)
            (change,) = options.items()
            found = _ONE_OPTION.get(change)
            if found is None:
                found = _ONE_OPTION[change] = _NO_OPTIONS._replace(**options)
            clone._options = found
            return clone
        clone._options = self._options._replace(**options)
        return clone

    # where a query runs

    @property
    def _shard_key(self) -> ShardKey | None:
        return key_for_model(self.model)

    @property
    def _routes_itself(self) -> bool:
        """True for a sharded model unless ``using()`` named one of its group's databases.

        An alias outside the group (say ``default``, which Django's admin passes for
        deletions) cannot hold the model's rows, so it is ignored and the key routes.
        """
        sk = self._shard_key
        if sk is None:
            return False
        return self._db is None or get_map(sk.group).shard_for_alias(self._db) is None

    def _shard_map(self) -> ShardMap:
        sk = self._shard_key
        assert sk is not None
        return get_map(sk.group)

    def _target_shards(self, sk: ShardKey | None = None) -> list[Shard]:
        """The shards this query will touch, in map order (``sk``: the model's key)."""
        if sk is None:
            sk = key_for_model(self.model)
            if sk is None:
                raise ShardingError(f"{self.model._meta.label} is not sharded.")
        shard_map = registry.get(sk.group)  # get_map(), without its frame
        if self._db is not None:
            shard = shard_map.shard_for_alias(self._db)
            if shard is not None:
                return [shard]
        options = self._options
        if options is not _NO_OPTIONS:
            if options.shard_name is not None:
                return [shard_map.shard_named(options.shard_name)]
            if options.pinned_key is not _UNSET:
                key = sk.normalize(options.pinned_key)
                shard = shard_map.shard_for_key(key)
                self._routed_point = key
                return [shard]
        # self.query without the property's call (a related manager's deferred filter aside)
        query = self._query if self._deferred_filter is None else self.query
        where = query.where
        children = where.children
        if len(children) == 1 and not where.negated and not query.combinator:
            # the common case (get(pk=k), filter(author_id=k)) inlined: one key, = value;
            # this runs on every routed query, where a call or two shows (cold caches).
            # The key-column test is where.on_key's, written out (keep them alike).
            node = children[0]
            if isinstance(node, lookups.Exact):
                lhs, rhs = node.lhs, node.rhs
                if (
                    isinstance(lhs, Col)
                    and lhs.alias == next(iter(query.alias_map), None)
                    and getattr(lhs.target, "column", None) == sk.column
                    and (rhs.__class__ is int or not hasattr(rhs, "resolve_expression"))
                ):
                    if rhs.__class__ is not int or not sk.int_key:
                        rhs = sk.normalize(rhs)
                    try:
                        shard = shard_map.shards[
                            shard_map.strategy.shard_for_key(shard_map.layout, rhs)
                        ]
                    except NoShardForKey:
                        return []
                    self._routed_point = rhs  # counted in the shard's load sample
                    return [shard]
        names = shards_from_query(query, sk, shard_map)
        if names is None and sk.lookups:
            names = lookup_index.shards_for(query, sk, shard_map)
            self._lookup_routed = names is not None
        if names is None:
            return shard_map.owning_shards
        if len(names) == 1:  # the common case: a key's owner
            return [shard_map.shards[next(iter(names))]]
        return [s for s in shard_map.owning_shards if s.name in names]

    def _route(self, shards: list[Shard] | None = None) -> list[Shard] | None:
        """Where this query runs: None when ``using()`` chose (or the model is unsharded),
        else its target shards (none: it matches nothing; ``shards``: already read). When
        there are several, the fan-out is checked (mergeable, ``FANOUT``: ``deny`` raises
        ``ShardKeyRequired`` unless ``.fanout()`` was asked, ``warn`` logs the model and the
        filter)."""
        sk = key_for_model(self.model)
        if sk is None:
            return None
        db = self._db
        if db is not None and get_map(sk.group).shard_for_alias(db) is not None:
            return None
        if shards is None:
            shards = self._target_shards(sk)
        if len(shards) > 1:
            evaluation.check_mergeable(self)
            if not self._options.fanout and not self._names_keys():
                apply_fanout_setting(self.model, sk, shards, self.query.where)
        return shards

    def _names_keys(self) -> bool:
        """True when the filters name shard keys (``author_id__in=[...]``) or looked-up
        values: not a query "without a key", even when the keys live on several shards."""
        sk = self._shard_key
        assert sk is not None
        found = shards_from_query(self.query, sk, self._shard_map())
        return self._lookup_routed or found is not None

    def _single_shard(self, shards: list[Shard]) -> Shard:
        if len(shards) == 1:
            return shards[0]
        if not shards:  # the filters match no shard: any shard answers "nothing"
            return self._shard_map().owning_shards[0]
        sk = self._shard_key
        assert sk is not None
        names = ", ".join(s.name for s in shards)
        raise ShardKeyRequired(
            f"This {self.model._meta.label} operation runs on one database, but the query does "
            f"not name its shard key ({sk.field_name!r}) and would touch {len(shards)} shards "
            f"({names}). Filter on the key, or use for_key() or on_shard()."
        )

    # writes

    def _check_writable(self, shards: list[Shard]) -> None:
        """Refuse a write that may touch keys a split is cutting over (``ShardMoving``)."""
        sk = self._shard_key
        if sk is None:
            return
        shard_map = get_map(sk.group)
        shard_map.check_confirmed()
        frozen = {f.source for f in shard_map.freezes} & {s.name for s in shards}
        if not frozen:
            return
        keys = keys_of(self.query, sk)
        if keys is None:
            load.count_event("shard_moving", sk.group)
            raise ShardMoving(
                f"Shard(s) {', '.join(sorted(frozen))} of group {sk.group!r} are cutting over "
                f"a split and this {self.model._meta.label} write does not name its keys; "
                "it was not made. It is safe to retry in a moment."
            )
        for key in keys:
            shard_map.check_writable(key)

    def _check_key_not_updated(self, values: dict[str, Any]) -> None:
        """Refuse an ``update()`` that sets the shard key (``ShardKeyChanged``), unless the
        filters pin every row to the very key it sets."""
        sk = self._shard_key
        if sk is None or self._options.keys_checked:
            return
        named = [f for f in (sk.field_name, sk.attname) if f in values]
        if not named:
            return
        value = values[named[0]]
        new = value if is_expression(value) else key_changes.normalized(sk, value)
        keys = keys_of(self.query, sk)
        if keys is not None and not is_expression(new) and keys <= {new}:
            return  # "set the key to what it is": nothing moves
        shards = [] if keys else [s.name for s in self._target_shards()]
        raise key_changes.key_changed(sk, sorted(keys or (), key=repr), new, old_shards=shards)

    def _after_write(self, alias: str | None) -> None:
        """Start read-your-writes for a write that ran on ``alias`` (when it is a primary)."""
        sk = self._shard_key
        if alias is None or sk is None:
            return
        shard = get_map(sk.group).shard_for_alias(alias)
        if shard is not None and alias == shard.primary:
            note_write(alias)

    def _count_write(self, alias: str | None, rows: int, started: float, point: Any) -> None:
        """Count a write that ran on ``alias`` since ``started`` toward its shard's load."""
        sk = self._shard_key
        if alias is None or sk is None:
            return
        shard = get_map(sk.group).shard_for_alias(alias)
        if shard is not None:
            seconds = time.perf_counter() - started
            load.record(sk.group, shard.name, write=True, rows=rows, seconds=seconds, point=point)

    def _by_shard(self, objs: Iterable[models.Model]) -> dict[str, list[models.Model]]:
        grouped: dict[str, list[models.Model]] = {}
        for obj in objs:
            grouped.setdefault(write_alias(write_shard(obj), pin=False), []).append(obj)
        return grouped

    def _single_write_shard(self, kwargs: dict[str, Any]) -> Shard | None:
        """The shard the filters' key names (not a lookup index's: a row to create would
        not belong there)."""
        qs = self.filter(**kwargs)
        shards = qs._target_shards()
        return shards[0] if len(shards) == 1 and not qs._lookup_routed else None
