"""Key -> shard -> alias: the decisions shared by the router and the sharded queryset."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.db import connections, models, transaction

from django_shards import context, load
from django_shards.conf import Shard, get_config
from django_shards.exceptions import (
    ShardingError,
    ShardKeyRequired,
    ShardMoving,
    ShardUnavailable,
)
from django_shards.health import monitor
from django_shards.keys import ShardKey, key_for_model
from django_shards.replicas import PLAIN_KIND, pool
from django_shards.shardmap import ShardMap, get_map, registry

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("django_shards.routing")


def sharding_of(model: type[models.Model]) -> ShardKey:
    """The model's shard key; raises ``ShardingError`` for an unsharded model."""
    key = key_for_model(model)
    if key is None:
        raise ShardingError(f"{model._meta.label} is not sharded (it has no ShardedManager).")
    return key


def shard_for(model: type[models.Model], key: Any) -> Shard:
    """The shard that owns ``key`` for ``model`` (``key`` may be a model instance).

    Written out (no ``sharding_of``/``get_map``/``ShardMap.shard_for_key`` layers): it is
    the placement itself plus a few lookups, on every call.
    """
    sk = key_for_model(model) or sharding_of(model)
    shard_map = registry.get(sk.group)
    if key.__class__ is not int or not sk.int_key:
        key = sk.normalize(key)
    return shard_map.shards[shard_map.strategy.shard_for_key(shard_map.layout, key)]


def instance_shard(instance: models.Model, group: str | None = None) -> Shard | None:
    """The shard that owns a sharded ``instance`` (None if it has no key yet).

    With ``group``, only an instance of that group answers.
    """
    sk = key_for_model(type(instance))
    if sk is None or (group is not None and sk.group != group):
        return None
    shard_map = get_map(sk.group)
    value = sk.value_of(instance)
    if value is None:
        return shard_map.shard_for_alias(instance._state.db)
    return shard_map.shard_for_key(value)


def require_instance_shard(instance: models.Model) -> Shard:
    shard = instance_shard(instance)
    if shard is None:
        sk = sharding_of(type(instance))
        raise ShardKeyRequired(
            f"{type(instance)._meta.label} has no shard key yet ({sk.field_name!r} is unset), "
            "so it cannot be routed; set the key before saving."
        )
    return shard


def write_shard(instance: models.Model) -> Shard:
    """The shard a write of ``instance`` goes to (its owner's), checked against freezes.

    Raises ``ShardKeyRequired`` when the key is unset, ``ShardMoving`` while a split is
    cutting over the key.
    """
    sk = sharding_of(type(instance))
    shard_map = get_map(sk.group)
    value = sk.value_of(instance)
    if value is None and sk.is_pk and instance._state.adding and sk.field.has_default():
        # e.g. an inline formset clears a new parent's pk so that it is made again on save;
        # make it now, since the row cannot be routed without it
        value = sk.normalize(sk.field.get_default())
        if value is not None:
            setattr(instance, sk.attname, value)
    if value is not None:
        shard_map.check_writable(value)
        return shard_map.shard_for_key(value)
    shard_map.check_confirmed()
    shard = shard_map.shard_for_alias(instance._state.db)  # a deferred key: where it was read
    if shard is None:
        return require_instance_shard(instance)
    if any(f.source == shard.name for f in shard_map.freezes):
        load.count_event("shard_moving", sk.group)
        raise ShardMoving(
            f"Shard {shard.name!r} of group {sk.group!r} is cutting over a split and this "
            f"{type(instance)._meta.label} was loaded without its key; retry in a moment."
        )
    return shard


def write_alias(shard: Shard, *, pin: bool = True) -> str:
    """The alias a write to ``shard`` uses (its primary).

    With ``pin``, starts the read-your-writes window for the shard before the write;
    :func:`note_write` completes it after the write. Saves and deletes of instances pin
    through signals (see :func:`pin_after_save`), since Django also asks the router for a
    write alias when it merely relates two objects.
    """
    alias = shard.primary
    if alias not in connections.settings:
        raise _unconfigured(shard, alias)
    if pin:
        context.pin(alias, get_config().pin_after_write_seconds)
    return alias


def _unconfigured(shard: Shard, alias: str) -> ShardUnavailable:
    return ShardUnavailable(
        f"Alias {alias!r}, the primary of shard {shard.name!r} in the catalog's shard map, is "
        "not in DATABASES, so the shard cannot be reached; add it to DATABASES "
        "(`manage.py check --database default` reports this as django_shards.E031)."
    )


def note_write(alias: str, *, same_session: bool = True) -> None:
    """A write ran on primary ``alias``: pin it for read-your-writes.

    With ``READ_YOUR_WRITES = "gtid"`` on MariaDB the pin also remembers the write's GTID
    once it commits (``@@last_gtid`` of this session, or the primary's binlog position when
    the write ran on another session), so replicas that applied it may serve the reads.
    """
    config = get_config()
    context.pin(alias, config.pin_after_write_seconds)
    if config.read_your_writes != "gtid" or config.pin_after_write_seconds <= 0:
        return
    conn = connections[alias]
    if conn.vendor != "mysql":
        return

    def remember_gtid() -> None:
        query = "SELECT @@last_gtid" if same_session else "SELECT @@gtid_binlog_pos"
        try:
            with conn.cursor() as cursor:
                cursor.execute(query)
                gtid = cursor.fetchone()[0]
                if not gtid and same_session:
                    cursor.execute("SELECT @@gtid_binlog_pos")
                    gtid = cursor.fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - without a GTID the pin stays time-based
            logger.warning(
                "no GTID read from %s after a write (%r): reads after it use the primary for "
                "PIN_AFTER_WRITE_SECONDS instead of replicas that applied it",
                alias,
                exc,
            )
            return
        if gtid:
            context.pin(alias, config.pin_after_write_seconds, gtid)

    transaction.on_commit(remember_gtid, using=alias)


def pin_after_save(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    """``post_save``/``post_delete`` receiver: a sharded row was written on ``using``."""
    sk = key_for_model(sender)
    if sk is None:
        return
    shard = get_map(sk.group).shard_for_alias(using)
    if shard is not None and using == shard.primary:
        note_write(using)


def read_alias(shard: Shard, consistency: str | None = None, *, connect: bool = True) -> str:
    """The alias a read of ``shard`` uses.

    ``consistency`` is an explicit choice (``strong()``/``eventual()``): strong reads the
    primary; eventual reads a usable replica, pinned or not. Without it, the
    ``consistency()`` block or ``READ_CONSISTENCY`` decides, and a shard this context wrote
    within ``PIN_AFTER_WRITE_SECONDS``, or one inside ``transaction.atomic``, reads its
    primary. With ``connect``, a replica is connected before it is chosen (one that cannot
    connect is skipped); callers that retry a failed read themselves pass False.

    An alias that the map names but ``DATABASES`` lacks (check E031) is never returned: such
    a replica counts as down, such a primary raises ``ShardUnavailable``.
    """
    primary = shard.primary
    if primary not in connections.settings:
        raise _unconfigured(shard, primary)
    replicas = shard.replicas
    if not replicas:
        return primary
    if consistency is None:
        if (_current_consistency() or get_config().read_consistency) == "strong":
            return primary
        # in_atomic_block(primary), inlined: this runs on every default read
        conn = getattr(_this_thread, primary, None)
        if conn is None:
            conn = _remember_connection(primary)
        if conn.in_atomic_block:
            return primary
        pin = None if _pins().get(primary) is None else context.pinned(primary)
        if pin is None and _pins().get(primary) is not None:
            context.drop_expired_pins()  # so the next reads skip the clock
        elif pin is not None:
            gtid = pin[1]
            if gtid is None or get_config().read_your_writes != "gtid":
                return primary
            # exact read-your-writes: any replica that has applied the write will do
            return (
                pool.choose(shard, accept=lambda r: monitor.has_applied(r, gtid), connect=connect)
                or primary
            )
    elif consistency == "strong":
        return primary
    if not connect and len(replicas) == 1 and not pool._down_until:
        # pool.choose's first case, inlined: one replica, usable without a call (a plain
        # database, or probed healthy within HEALTH_TTL_SECONDS) and not cooling down
        alias = replicas[0]
        if pool._kinds.get(alias) is PLAIN_KIND or _monotonic() < _healthy_until.get(alias, 0.0):
            return alias
    return pool.choose(shard, connect=connect) or primary


#: bound once: read_alias runs on every routed read
_current_consistency, _pins, _monotonic = context.current_consistency, context.pins, time.monotonic
_healthy_until = monitor.healthy_until  # the monitor clears it in place, never replaces it


#: this thread's connection object of each alias, as attributes (alias -> object)
_this_thread = threading.local()


def in_atomic_block(alias: str) -> bool:
    """``connections[alias].in_atomic_block``, without the connection handler's
    thread-local lookup (~0.7 us, on every default read of a shard with replicas).

    Django keeps one connection object per alias and thread for the life of the thread
    (``connections`` is thread-critical), so each thread's objects are remembered here,
    until ``DATABASES`` changes.
    """
    conn = getattr(_this_thread, alias, None)
    if conn is None:
        conn = _remember_connection(alias)
    return bool(conn.in_atomic_block)


def _remember_connection(alias: str) -> BaseDatabaseWrapper:
    conn = connections[alias]
    setattr(_this_thread, alias, conn)
    return conn


def _forget_connections(*, setting: str, **kwargs: Any) -> None:
    global _this_thread  # every thread's remembered objects are stale
    if setting == "DATABASES":
        _this_thread = threading.local()


setting_changed.connect(_forget_connections, dispatch_uid="django_shards.routing.connections")


def shard_map_for(model: type[models.Model]) -> ShardMap:
    return get_map(sharding_of(model).group)
