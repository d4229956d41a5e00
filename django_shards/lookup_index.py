"""Lookup indexes: a filter on a looked-up field reads one table, then only the shards that
hold its rows; a looked-up field declared ``unique=True`` is unique across the cluster.

``ShardedManager(group="users", key="id", lookups=["email"])``: each value a row has in a
looked-up field is an entry of :class:`~django_shards.models.LookupEntry` on
``LOOKUP_ALIAS`` (the catalog by default), value -> shard key. Keys, not shards, are
stored: a split or a failover leaves the index alone.

The index never makes an answer wrong:

- a read keeps its filter, the index only narrows the shards it runs on: an entry whose
  row has since lost the value (stale, an orphan) costs one query that finds nothing;
- writes keep every stored value covered by an entry at every moment (entries may outlive
  their rows, never the reverse): an entry is written before the row that needs it (an
  insert, a changed value), and removed after the row stopped needing it (a delete, a
  changed value), once the row's transaction has committed, and only when no row of that
  key still has the value.

A crash between the two writes leaves an orphan entry, which reads survive;
``shard_lookup_rebuild --check`` reports it and ``shard_lookup_rebuild`` removes it. A
cluster-unique value held by an orphan is taken over by a new row once the orphan is older
than :data:`ORPHAN_GRACE_SECONDS` (a younger one may be a write still in flight).

Entries are written on ``LOOKUP_ALIAS``'s connection: inside a transaction on that alias
they commit with it (check W005 warns of ``ATOMIC_REQUESTS`` there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from django.core.exceptions import FieldDoesNotExist
from django.db import IntegrityError, NotSupportedError, connections, models, transaction
from django.db.models import lookups
from django.db.models.sql.where import AND, NothingNode, WhereNode
from django.utils import timezone

from django_shards.conf import get_config
from django_shards.keys import ShardKey, key_for_model
from django_shards.shardmap import ShardMap
from django_shards.strategies.base import canonical_key
from django_shards.where import base_alias, is_expression, on_key

#: an orphan entry of a cluster-unique value younger than this may be a write in flight:
#: a new row does not take its value over
ORPHAN_GRACE_SECONDS = 30.0
#: a write's row follows its entry within this time (``shard_lookup_rebuild`` looks at an
#: entry without its row again once it is this old, before it reports or removes it)
IN_FLIGHT_SECONDS = 2.0
#: values per lookup query (``filter(email__in=[...])`` with more reads in chunks)
CHUNK = 500
T = TypeVar("T")
#: a looked-up value not loaded on an instance (a deferred field)
UNKNOWN: Any = object()


@dataclass(frozen=True)
class Lookup:
    """One looked-up field of a sharded model."""

    sk: ShardKey
    field: models.Field
    #: the model's label in the index (its concrete model's ``app_label.modelname``)
    label: str

    @property
    def unique(self) -> bool:
        return bool(self.field.unique)

    @property
    def name(self) -> str:
        return str(self.field.name)

    @property
    def attname(self) -> str:
        return str(self.field.attname)


@functools.cache
def lookups_of(model: type[models.Model]) -> tuple[Lookup, ...]:
    """The model's lookups (none for an unsharded model); a field that does not exist is
    left out (check E040 reports it)."""
    sk = key_for_model(model)
    if sk is None or not sk.lookups:
        return ()
    label = sk.model._meta.label_lower
    found = []
    for name in sk.lookups:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        if isinstance(field, models.Field) and field.concrete:
            found.append(Lookup(sk, field, label))
    return tuple(found)


def alias() -> str:
    """The database alias the lookup indexes live on."""
    return get_config().lookup_alias


def value_text(field: models.Field, value: Any) -> str | None:
    """The text a value is indexed by (None: no entry, e.g. a NULL)."""
    if value is None:
        return None
    value = field.to_python(value)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def key_text(key: Any) -> str:
    return str(canonical_key(key))


# reads


def shards_for(query: Any, sk: ShardKey, shard_map: ShardMap) -> set[str] | None:
    """The shards whose rows can match ``query`` by its looked-up values, or None when its
    filters name no looked-up value (``field=v`` or ``field__in=[...]``, AND-ed)."""
    if query.combinator or not sk.lookups:
        return None
    found = _values_in(query.where, base_alias(query), lookups_of(sk.model))
    if found is None:
        return None
    lookup, values = found
    names: set[str] = set()
    for key in read_keys(lookup, values):
        try:
            names.add(shard_map.strategy.shard_for_key(shard_map.layout, sk.normalize(key)))
        except Exception:  # noqa: BLE001 - no shard holds it (NoShardForKey), or bad text
            continue
    return names


def _values_in(
    node: Any, table: str | None, candidates: Sequence[Lookup]
) -> tuple[Lookup, set[str]] | None:
    """The looked-up field an AND-ed WHERE tree narrows most, with its values' texts."""
    best: tuple[Lookup, set[str]] | None = None
    for found in _named_values(node, table, candidates):
        if best is None or len(found[1]) < len(best[1]):
            best = found
    return best


def _named_values(
    node: Any, table: str | None, candidates: Sequence[Lookup]
) -> Iterator[tuple[Lookup, set[str]]]:
    if isinstance(node, WhereNode):
        if node.negated or node.connector != AND:
            return
        for child in node.children:
            yield from _named_values(child, table, candidates)
        return
    if not isinstance(node, lookups.Exact | lookups.In):
        return
    for lookup in candidates:
        if on_key(node.lhs, table, str(lookup.field.column)):
            values = [node.rhs] if isinstance(node, lookups.Exact) else node.rhs
            if is_expression(values) or any(is_expression(v) for v in values):
                return
            texts = {value_text(lookup.field, v) for v in values}
            texts.discard(None)
            yield lookup, texts  # type: ignore[misc]  # None was discarded
            return


def read_keys(lookup: Lookup, values: Iterable[str]) -> list[str]:
    """The shard keys (as text) the index holds for ``values`` of ``lookup``."""
    values = sorted(values)
    if not values:
        return []
    connection = connections[alias()]
    keys: list[str] = []
    with connection.cursor() as cursor:
        for start in range(0, len(values), CHUNK):
            chunk = values[start : start + CHUNK]
            cursor.execute(
                _select_sql(connection.alias, len(chunk)), [lookup.label, lookup.name, *chunk]
            )
            keys.extend(row[0] for row in cursor.fetchall())
    return list(dict.fromkeys(keys))


def matching_nothing(qs: Any, run: Callable[[], T]) -> T:
    """``run()`` (a read of ``qs``) answered as for ``none()``, without a query: the
    index holds no row for the values ``qs`` names."""
    query = qs.query
    where = query.where
    query.where = where.clone()
    query.where.add(NothingNode(), AND)
    try:
        return run()
    finally:
        query.where = where


@functools.cache
def _select_sql(db: str, n: int) -> str:
    from django_shards.models import LookupEntry

    q = connections[db].ops.quote_name
    meta = LookupEntry._meta
    return (
        # no DISTINCT: SQLite would then plan on the (model, field, key) index and scan
        f"SELECT {q('key')} FROM {q(meta.db_table)} WHERE {q('model')} = %s "
        f"AND {q('field')} = %s AND {q('value')} IN ({', '.join(['%s'] * n)})"
    )


# writes


def entry(lookup: Lookup, key: str, value: str) -> Any:
    from django_shards.models import LookupEntry

    return LookupEntry(
        model=lookup.label,
        field=lookup.name,
        value=value,
        key=key,
        dedupe="" if lookup.unique else key,
    )


Claim = tuple[Lookup, str, str]  # (lookup, key text, value text)


def claim(claims: Iterable[Claim], *, fresh: bool = False) -> None:
    """Make sure the entries these (lookup, key, value) need exist, before their rows are
    written (``fresh``: values of new rows, which are inserted without looking first).

    All or nothing: raises ``IntegrityError`` (and writes no entry) when a cluster-unique
    value is held by a row of another key.
    """
    wanted = {(c[0].label, c[0].name, c[1], c[2]): c for c in claims}
    db = alias()
    if wanted and not fresh:
        for held in _held(db, wanted.values()):
            wanted.pop(held, None)
    if not wanted:
        return
    entries = [entry(*c) for c in wanted.values()]
    with transaction.atomic(using=db):
        try:
            with transaction.atomic(using=db):
                type(entries[0]).objects.using(db).bulk_create(entries)
            return
        except IntegrityError:
            pass  # some are there already (or held): one at a time
        for (lookup, key, value), new in zip(wanted.values(), entries, strict=True):
            _claim_one(db, lookup, key, value, new)


def _held(db: str, claims: Iterable[Claim]) -> set[tuple[str, str, str, str]]:
    """Those of ``claims`` whose entry exists: (label, field, key, value), a query per
    :data:`CHUNK` / 5 claims."""
    from django_shards.models import LookupEntry

    claims = list(claims)
    found: set[tuple[str, str, str, str]] = set()
    for start in range(0, len(claims), CHUNK // 5):
        condition = models.Q()
        for lookup, key, value in claims[start : start + CHUNK // 5]:
            condition |= models.Q(model=lookup.label, field=lookup.name, value=value, key=key)
        rows = LookupEntry.objects.using(db).filter(condition)
        found.update(rows.values_list("model", "field", "key", "value"))
    return found


def _claim_one(db: str, lookup: Lookup, key: str, value: str, new: Any) -> None:
    manager = type(new).objects.using(db)
    for _attempt in range(3):
        try:
            with transaction.atomic(using=db):
                new.pk = None
                new.save(using=db, force_insert=True)
            return
        except IntegrityError:
            pass
        held = (
            manager.select_for_update()
            .filter(model=new.model, field=new.field, value=value, dedupe=new.dedupe)
            .first()
        )
        if held is None:
            continue  # removed in between: insert again
        if held.key == key:
            return  # this key has it already (equal values under the column's collation)
        if held.created < timezone.now() - timedelta(seconds=ORPHAN_GRACE_SECONDS) and not row_has(
            lookup, held.key, held.value
        ):
            manager.filter(pk=held.pk).update(key=key, value=value, created=timezone.now())
            return
        raise IntegrityError(
            f"{lookup.sk.model._meta.label}.{lookup.name} {value!r} is already used by the "
            f"row(s) of shard key {held.key} ({lookup.name} is unique across the cluster); "
            "nothing was written."
        )
    raise IntegrityError(f"Could not claim {lookup.label}.{lookup.name} {value!r}; retry.")


def row_has(lookup: Lookup, key: str, value: str) -> bool:
    """Whether a row of shard key ``key`` has ``value`` (on its shard's primary)."""
    sk = lookup.sk
    manager = getattr(sk.model, sk.manager_name)
    try:
        normalized = sk.normalize(key)
    except Exception:  # noqa: BLE001 - an entry naming a key of another type: no row
        return False
    return bool(manager.strong().filter(**{sk.attname: normalized, lookup.name: value}).exists())


def release(releases: Iterable[Claim]) -> None:
    """Remove the entries no row of their key needs any more (after the rows' commit)."""
    from django_shards.models import LookupEntry

    db = alias()
    for lookup, key, value in dict.fromkeys(releases):
        if row_has(lookup, key, value):
            continue
        LookupEntry.objects.using(db).filter(
            model=lookup.label, field=lookup.name, value=value, key=key
        ).delete()
        if not lookup.unique and row_has(lookup, key, value):
            claim([(lookup, key, value)])  # a row of the key took the value meanwhile


def release_after_commit(using: str | None, releases: list[Claim]) -> None:
    """:func:`release` once the transaction on ``using`` (the rows' primary) commits."""
    if releases:
        transaction.on_commit(functools.partial(release, releases), using=using)


def release_after_commits(releases: list[Claim]) -> None:
    """:func:`release_after_commit`, on the primary of each release's key."""
    from django_shards.routing import shard_for

    by_alias: dict[str, list[Claim]] = {}
    for item in releases:
        sk = item[0].sk
        primary = shard_for(sk.model, sk.normalize(item[1])).primary
        by_alias.setdefault(primary, []).append(item)
    for db, items in by_alias.items():
        release_after_commit(db, items)


# the instance's values: remembered when loaded and saved


def remember(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    """``post_init``/``post_save`` receiver: the looked-up values the row has now."""
    instance._state.lookup_values = {  # type: ignore[attr-defined]
        lk.attname: instance.__dict__.get(lk.attname, UNKNOWN) for lk in lookups_of(sender)
    }


def _stored(instance: models.Model, lookup: Lookup) -> str | Any | None:
    """The value text the instance's row had when it was loaded or saved (or UNKNOWN)."""
    was = getattr(instance._state, "lookup_values", {}).get(lookup.attname, UNKNOWN)
    return UNKNOWN if was is UNKNOWN else value_text(lookup.field, was)


def before_save(
    sender: type[models.Model],
    instance: models.Model,
    raw: bool = False,
    update_fields: Any = None,
    **kwargs: Any,
) -> None:
    """``pre_save``: claim the values the row is about to have."""
    sk = key_for_model(sender)
    assert sk is not None
    key = sk.value_of(instance)
    instance._state.lookup_releases = []  # type: ignore[attr-defined]
    if key is None:
        return  # the save refuses a row without its key
    claims, releases = [], []
    for lookup in lookups_of(sender):
        if update_fields is not None and not {lookup.name, lookup.attname} & set(update_fields):
            continue
        if lookup.attname not in instance.__dict__:
            continue  # deferred: this save does not write it
        new = value_text(lookup.field, instance.__dict__[lookup.attname])
        was = UNKNOWN if instance._state.adding else _stored(instance, lookup)
        if new is not None:
            # even when unchanged: another writer may have changed the row, and freed the
            # value, since this instance was loaded
            claims.append((lookup, key_text(key), new))
        if was is not UNKNOWN and was is not None and was != new:
            releases.append((lookup, key_text(key), was))
    claim(claims, fresh=instance._state.adding)
    instance._state.lookup_releases = releases  # type: ignore[attr-defined]


def after_save(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    """``post_save``: remember the new values; free the old ones after the commit."""
    remember(sender, instance)
    release_after_commit(kwargs.get("using"), instance._state.__dict__.pop("lookup_releases", []))


def after_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    """``post_delete`` (cascades too): free the row's values after the commit."""
    sk = key_for_model(sender)
    assert sk is not None
    key = sk.value_of(instance)
    if key is None:
        return
    releases = []
    for lookup in lookups_of(sender):
        was = _stored(instance, lookup)
        if was is UNKNOWN and lookup.attname in instance.__dict__:
            was = value_text(lookup.field, instance.__dict__[lookup.attname])
        if was is not UNKNOWN and was is not None:
            releases.append((lookup, key_text(key), was))
    release_after_commit(kwargs.get("using"), releases)


# bulk writes, which send no signals


def bulk_create(qs: Any, objs: Sequence[models.Model], run: Callable) -> Any:
    """``qs.bulk_create``: claim every object's values, then insert (``run``)."""
    model = qs.model
    found = lookups_of(model)
    if not found or qs._options.keys_checked:
        return run()
    sk = found[0].sk
    claims = []
    for obj in objs:
        key = sk.value_of(obj)
        for lookup in found:
            value = value_text(lookup.field, obj.__dict__.get(lookup.attname))
            if key is not None and value is not None:
                claims.append((lookup, key_text(key), value))
    claim(claims, fresh=True)
    result = run()
    for obj in objs:
        remember(model, obj)
    return result


def bulk_update(qs: Any, objs: Sequence[models.Model], fields: Iterable[str], run: Callable) -> Any:
    """``qs.bulk_update`` of looked-up fields: as many ``save(update_fields=...)``."""
    model = qs.model
    names = set(fields)
    found = [lk for lk in lookups_of(model) if {lk.name, lk.attname} & names]
    if not found or qs._options.keys_checked:
        return run()
    sk = found[0].sk
    keys = {sk.value_of(obj) for obj in objs} - {None}
    # what the rows have now (the instances may be stale)
    stored = qs.model._base_manager.strong().filter(**{f"{sk.attname}__in": keys})
    olds = stored.values_list(sk.attname, *(lk.attname for lk in found))
    claims = [
        (lookup, key_text(key), new)
        for obj in objs
        if (key := sk.value_of(obj)) is not None
        for lookup in found
        if (new := value_text(lookup.field, obj.__dict__.get(lookup.attname))) is not None
    ]
    news = {(lk, c[1], c[2]) for c in claims for lk in [c[0]]}
    releases = [
        (lookup, key_text(key), was)
        for key, *values in olds
        for lookup, old in zip(found, values, strict=True)
        if (was := value_text(lookup.field, old)) is not None
        and (lookup, key_text(key), was) not in news
    ]
    claim(claims)
    result = run()
    for obj in objs:
        remember(model, obj)
    release_after_commits(releases)
    return result


def update(qs: Any, values: dict[str, Any], run: Callable[[], int]) -> int:
    """``update()`` setting looked-up fields: claim the new values of the rows it changes,
    update, then free the old ones."""
    found = [lk for lk in lookups_of(qs.model) if lk.name in values or lk.attname in values]
    if not found:
        return run()
    sk = found[0].sk
    news = {}
    for lookup in found:
        value = values[lookup.name] if lookup.name in values else values[lookup.attname]
        if is_expression(value):
            raise NotSupportedError(
                f"update() sets the looked-up field {lookup.name!r} of "
                f"{qs.model._meta.label} to an expression, whose values the lookup index "
                "cannot know before the write; nothing was written. Set a value, or save "
                "the rows one by one."
            )
        news[lookup] = value_text(lookup.field, value)
    rows = list(qs.strong().values_list(sk.attname, *(lk.attname for lk in found)))
    claims, releases = [], []
    for key, *olds in rows:
        for lookup, old in zip(found, olds, strict=True):
            new, was = news[lookup], value_text(lookup.field, old)
            if new is not None and new != was:
                claims.append((lookup, key_text(key), new))
            if was is not None and was != new:
                releases.append((lookup, key_text(key), was))
    claim(claims)
    count = run()
    release_after_commits(releases)
    return count


def connect(models_: Iterable[type[models.Model]]) -> None:
    """Keep the lookups of the sharded models among ``models_`` current."""
    from django.db.models.signals import post_delete, post_init, post_save, pre_save

    for model in models_:
        if not lookups_of(model):
            continue
        uid = f"django_shards.lookups.{model._meta.label_lower}"
        post_init.connect(remember, sender=model, dispatch_uid=f"{uid}.init")
        pre_save.connect(before_save, sender=model, dispatch_uid=f"{uid}.claim")
        post_save.connect(after_save, sender=model, dispatch_uid=f"{uid}.saved")
        post_delete.connect(after_delete, sender=model, dispatch_uid=f"{uid}.deleted")
