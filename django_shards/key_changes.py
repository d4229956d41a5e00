"""A row's shard key never changes in place.

A row lives on the shard its key picks. Writing a new key over an existing row would leave
it on the old shard (where lookups by the new key never look) or insert a copy on the new
shard. So ``save()``, ``update_or_create()``, ``bulk_update()`` and ``update()`` refuse such
a write with ``ShardKeyChanged`` before anything is written. The key an instance was loaded
(or last saved) with is remembered on its ``_state`` by a ``post_init`` receiver connected
for sharded models only; ``pre_save`` compares it with the key about to be written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models
from django.db.models.signals import post_init, post_save, pre_save

from django_shards.exceptions import NoShardForKey, ShardKeyChanged
from django_shards.keys import ShardKey, key_for_model
from django_shards.shardmap import get_map

#: the key of an instance whose key field was not loaded (deferred)
UNKNOWN: Any = object()


def remember_key(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    """``post_init``/``post_save`` receiver: the key the row has in its database now."""
    sk = key_for_model(sender)
    if sk is not None:
        instance._state.shard_key = instance.__dict__.get(sk.attname, UNKNOWN)  # type: ignore[attr-defined]


def refuse_key_change(
    sender: type[models.Model], instance: models.Model, raw: bool = False, **kwargs: Any
) -> None:
    """``pre_save`` receiver: raise ``ShardKeyChanged`` if ``instance`` (a stored row) now
    carries another shard key than the one it was loaded with."""
    if raw or instance._state.adding:
        return
    sk = key_for_model(sender)
    if sk is not None:
        check_unchanged(sk, instance)


def check_unchanged(sk: ShardKey, instance: models.Model) -> None:
    """Raise ``ShardKeyChanged`` when a stored ``instance``'s key differs from its row's."""
    if sk.attname not in instance.__dict__:
        return  # the key is not loaded, so this write cannot change it
    new = normalized(sk, instance.__dict__[sk.attname])
    old = getattr(instance._state, "shard_key", UNKNOWN)
    if old is not UNKNOWN:
        old = normalized(sk, old)
        if old != new:
            raise key_changed(sk, [old], new, pk=instance.pk)
        return
    # the key was loaded after the instance (a deferred field): judge by the shard it was
    # read from, which is all that can be known
    shard_map = get_map(sk.group)
    loaded_from = shard_map.shard_for_alias(instance._state.db)
    if loaded_from is not None and _shard_name(sk, new) != loaded_from.name:
        raise key_changed(sk, [], new, pk=instance.pk, old_shards=[loaded_from.name])


def check_bulk_unchanged(sk: ShardKey, objs: Iterable[models.Model]) -> None:
    """``check_unchanged`` for every stored object, before anything is written."""
    for obj in objs:
        if not obj._state.adding:
            check_unchanged(sk, obj)


def normalized(sk: ShardKey, value: Any) -> Any:
    """``value`` as the key field's type (as it was, when it is not a valid key)."""
    try:
        return sk.normalize(value)
    except Exception:  # noqa: BLE001 - a malformed key still differs from a good one
        return value


def _shard_name(sk: ShardKey, key: Any) -> str | None:
    if key is None:
        return None
    try:
        return get_map(sk.group).shard_for_key(key).name
    except (NoShardForKey, ValueError, TypeError):
        return None


def key_changed(
    sk: ShardKey,
    old_keys: Iterable[Any],
    new: Any,
    *,
    pk: Any = None,
    old_shards: Iterable[str] = (),
) -> ShardKeyChanged:
    """The ``ShardKeyChanged`` for a write of key ``new`` over rows keyed ``old_keys``
    (those of the instance ``pk`` when given, else of an ``update()``)."""
    label = sk.model._meta.label
    old_keys = list(old_keys)
    shards = list(dict.fromkeys([*old_shards, *(_shard_name(sk, k) or "?" for k in old_keys)]))
    on = f"shard {', '.join(map(repr, shards))}" if shards else ""
    if old_keys:
        was = f"from {', '.join(map(repr, old_keys))}" + (f" ({on})" if on else "")
    else:
        was = f"from the key(s) its rows have on {on}" if on else "from the key(s) its rows have"
    new_shard = _shard_name(sk, new)
    to = f"to {new!r}" + (f" (shard {new_shard!r})" if new_shard else "")
    if pk is not None:
        subject = f"Saving {label} {pk!r} would change its shard key {sk.field_name!r}"
    else:
        subject = f"update() would change the shard key {sk.field_name!r} of {label}"
    return ShardKeyChanged(
        f"{subject} {was} {to}; nothing was written. A row's shard key picks its shard, so "
        "it cannot change in place: to move the row, create it with the new key and delete "
        "the old one."
    )


def connect(models_: Iterable[type[models.Model]]) -> None:
    """Guard the sharded models among ``models_`` (called once the apps are ready)."""
    for model in models_:
        if key_for_model(model) is None:
            continue
        uid = f"django_shards.key_changes.{model._meta.label_lower}"
        post_init.connect(remember_key, sender=model, dispatch_uid=f"{uid}.init")
        post_save.connect(remember_key, sender=model, dispatch_uid=f"{uid}.saved")
        pre_save.connect(refuse_key_change, sender=model, dispatch_uid=f"{uid}.save")
