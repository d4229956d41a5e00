"""Settings: ``DJANGO_SHARDS`` merged over defaults, parsed once into frozen objects.

Nothing here reads settings at import time. :func:`get_config` is cached and the cache
is cleared on ``setting_changed`` (so ``override_settings`` works); every other module that
keeps something derived from settings connects its own receiver, clearing it when one of
:data:`WATCHED_SETTINGS` changes. :data:`DEFAULTS` is the one place defaults are written:
:func:`merged_settings` lays ``DJANGO_SHARDS`` over it, for :func:`get_config` and for the
system checks alike. Validation with friendly messages lives in :mod:`django_shards.checks`;
this module only parses, and raises ``ImproperlyConfigured`` (pointing at
``manage.py check``) on malformed input. It imports nothing else of django_shards.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

SETTING = "DJANGO_SHARDS"
#: the documentation online: check hints link to its pages (the package ships no docs/)
DOCS_URL = "https://django-shards.readthedocs.io/en/latest/"

#: the settings whose change clears what is derived from them (this module's parsed
#: settings, the shard maps, replica and health state, the Snowflake generator)
WATCHED_SETTINGS = frozenset({SETTING, "DATABASES", "INSTALLED_APPS"})

#: every key of ``DJANGO_SHARDS`` and its default: the only place defaults are written
DEFAULTS: dict[str, Any] = {
    "GROUPS": {},
    "CATALOG": "default",
    "READ_CONSISTENCY": "eventual",
    "PIN_AFTER_WRITE_SECONDS": 2.0,
    "READ_YOUR_WRITES": "time",
    "REPLICA_SELECTION": "round_robin",
    "MAX_REPLICA_LAG_SECONDS": 5.0,
    "FANOUT": "allow",
    "FANOUT_WORKERS": 8,
    "FANOUT_TIMEOUT_SECONDS": 30.0,
    "MAP_LEASE_SECONDS": 1.0,
    "NODE_ID": None,
    "OPERATOR": None,
    "LOAD_FLUSH_SECONDS": 10.0,
    "LOAD_WINDOW_SECONDS": 300.0,
    "HOT_SHARD_FACTOR": 1.5,
    "SPARES": [],
    "LOOKUP_ALIAS": None,
}

#: the keys of ``DJANGO_SHARDS["OPERATOR"]``: the account for work beyond the app's rights
OPERATOR_KEYS = ("USER", "PASSWORD", "REPLICATION_USER", "REPLICATION_PASSWORD")

BUILTIN_STRATEGIES: dict[str, str] = {
    "range": "django_shards.strategies.range.RangeStrategy",
    "hash": "django_shards.strategies.hash.HashStrategy",
    "consistent_hash": "django_shards.strategies.consistent_hash.ConsistentHashStrategy",
    "modulo": "django_shards.strategies.modulo.ModuloStrategy",
}

CONSISTENCY_LEVELS = ("eventual", "strong")
READ_YOUR_WRITES_MODES = ("time", "gtid")
REPLICA_SELECTIONS = ("round_robin", "random", "fastest")
FANOUT_MODES = ("allow", "warn", "deny")


@dataclass(frozen=True)
class Shard:
    """One shard: a name, a primary alias and replica aliases (all keys of DATABASES), and
    the former primaries a failover replaced (``demoted``: recorded in the map, never used
    by the application)."""

    name: str
    primary: str
    replicas: tuple[str, ...] = ()
    demoted: tuple[str, ...] = ()

    @property
    def aliases(self) -> tuple[str, ...]:
        """The aliases that serve the shard (a demoted one does not)."""
        return (self.primary, *self.replicas)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "primary": self.primary,
            "replicas": list(self.replicas),
        }
        if self.demoted:
            data["demoted"] = list(self.demoted)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Shard:
        return cls(
            str(data["name"]),
            str(data["primary"]),
            tuple(data.get("replicas") or ()),
            tuple(data.get("demoted") or ()),
        )


@dataclass(frozen=True)
class ShardSettings:
    """A shard as configured in settings; ``range`` is the raw ``RANGE`` (or None)."""

    shard: Shard
    range: tuple[Any, Any] | None = None

    @property
    def name(self) -> str:
        return self.shard.name


@dataclass(frozen=True)
class GroupSettings:
    name: str
    strategy: str  # dotted path of the strategy class
    options: Mapping[str, Any]
    shards: tuple[ShardSettings, ...]


@dataclass(frozen=True)
class OperatorSettings:
    """``DJANGO_SHARDS["OPERATOR"]``: the account used for binlog streams, promotion and
    ``CHANGE MASTER TO``, at the same host and port as each alias. The passwords stay out
    of ``repr()``."""

    user: str
    password: str = field(default="", repr=False)
    replication_user: str | None = None
    replication_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Spare:
    """One entry of ``SPARES``: a primary alias and its replicas, free for a new shard."""

    primary: str
    replicas: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardsSettings:
    """The parsed settings; every field comes from :func:`parse` (defaults: :data:`DEFAULTS`)."""

    groups: Mapping[str, GroupSettings]
    catalog: str
    read_consistency: str
    pin_after_write_seconds: float
    read_your_writes: str
    replica_selection: str
    max_replica_lag_seconds: float
    fanout: str
    fanout_workers: int
    fanout_timeout_seconds: float
    map_lease_seconds: float
    node_id: int | None
    #: alias -> the groups it serves as a primary
    primaries: Mapping[str, frozenset[str]]
    #: every replica alias of the settings
    replicas: frozenset[str]
    #: ``OPERATOR``, or None when it is not configured
    operator: OperatorSettings | None = None
    #: how often each process writes its routed-query counts to the catalog (seconds)
    load_flush_seconds: float = 10.0
    #: the window ``shard_status`` reports load over (seconds)
    load_window_seconds: float = 300.0
    #: a shard whose rows or load exceed this many times its group's mean is hot
    hot_shard_factor: float = 1.5
    #: ``SPARES``: databases free for new shards, taken in order (``primary``, replicas)
    spares: tuple[Spare, ...] = ()
    #: ``LOOKUP_ALIAS``: where the lookup indexes live (the catalog when not set)
    lookup_alias: str = "default"


def user_settings() -> Any:
    """``DJANGO_SHARDS`` as written (``{}`` when unset or None); maybe not a dict."""
    value = getattr(settings, SETTING, None)
    return {} if value is None else value


def merged_settings() -> dict[str, Any] | None:
    """``DJANGO_SHARDS`` merged over :data:`DEFAULTS` (top level only), or None when it is
    not a dict (check E001)."""
    user = user_settings()
    if not isinstance(user, Mapping):
        return None
    return {**DEFAULTS, **user}


def raw_settings() -> dict[str, Any]:
    """:func:`merged_settings`; raises ``ImproperlyConfigured`` when it is not a dict."""
    raw = merged_settings()
    if raw is None:
        raise ImproperlyConfigured(f"{SETTING} must be a dict; run `manage.py check`.")
    return raw


def strategy_path(name: str) -> str:
    """The dotted path of a strategy given by its short name or a dotted path."""
    return BUILTIN_STRATEGIES.get(name, name)


def _parse_shard(raw: Mapping[str, Any]) -> ShardSettings:
    rng = raw.get("RANGE")
    return ShardSettings(
        shard=Shard(str(raw["NAME"]), str(raw["PRIMARY"]), tuple(raw.get("REPLICAS") or ())),
        range=tuple(rng) if rng is not None else None,
    )


def _parse_operator(raw: Any) -> OperatorSettings | None:
    """``OPERATOR``; the errors name keys, never values (they hold passwords)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise TypeError("OPERATOR must be a dict")
    if any(not isinstance(raw.get(key, ""), str) for key in OPERATOR_KEYS):
        raise TypeError("OPERATOR's values must be strings")
    if "USER" not in raw or "PASSWORD" not in raw:
        raise KeyError("OPERATOR needs USER and PASSWORD")
    return OperatorSettings(
        user=raw["USER"],
        password=raw["PASSWORD"],
        replication_user=raw.get("REPLICATION_USER"),
        replication_password=raw.get("REPLICATION_PASSWORD"),
    )


def parse(raw: Mapping[str, Any]) -> ShardsSettings:
    """Parse merged settings. Raises ``ImproperlyConfigured`` on malformed structure."""
    try:
        groups: dict[str, GroupSettings] = {}
        primaries: dict[str, set[str]] = {}
        replicas: set[str] = set()
        for name, group in dict(raw["GROUPS"]).items():
            shards = tuple(_parse_shard(s) for s in group["SHARDS"])
            groups[name] = GroupSettings(
                name=name,
                strategy=strategy_path(group.get("STRATEGY", "hash")),
                options=dict(group.get("OPTIONS") or {}),
                shards=shards,
            )
            for spec in shards:
                primaries.setdefault(spec.shard.primary, set()).add(name)
                replicas.update(spec.shard.replicas)
        node_id = raw.get("NODE_ID")
        lookup_alias = raw.get("LOOKUP_ALIAS")
        return ShardsSettings(
            groups=groups,
            catalog=str(raw["CATALOG"]),
            lookup_alias=str(raw["CATALOG"] if lookup_alias is None else lookup_alias),
            read_consistency=str(raw["READ_CONSISTENCY"]),
            pin_after_write_seconds=float(raw["PIN_AFTER_WRITE_SECONDS"]),
            read_your_writes=str(raw["READ_YOUR_WRITES"]),
            replica_selection=str(raw["REPLICA_SELECTION"]),
            max_replica_lag_seconds=float(raw["MAX_REPLICA_LAG_SECONDS"]),
            fanout=str(raw["FANOUT"]),
            fanout_workers=int(raw["FANOUT_WORKERS"]),
            fanout_timeout_seconds=float(raw["FANOUT_TIMEOUT_SECONDS"]),
            map_lease_seconds=float(raw["MAP_LEASE_SECONDS"]),
            node_id=None if node_id is None else int(node_id),
            primaries={alias: frozenset(g) for alias, g in primaries.items()},
            replicas=frozenset(replicas),
            operator=_parse_operator(raw.get("OPERATOR")),
            load_flush_seconds=float(raw["LOAD_FLUSH_SECONDS"]),
            load_window_seconds=float(raw["LOAD_WINDOW_SECONDS"]),
            hot_shard_factor=float(raw["HOT_SHARD_FACTOR"]),
            spares=tuple(
                Spare(str(s["PRIMARY"]), tuple(str(r) for r in s.get("REPLICAS") or ()))
                for s in raw["SPARES"] or ()
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ImproperlyConfigured(
            f"DJANGO_SHARDS is malformed ({exc!r}); run `manage.py check` for details."
        ) from exc


@functools.cache
def get_config() -> ShardsSettings:
    """The parsed settings. Cached; cleared when one of :data:`WATCHED_SETTINGS` changes."""
    return parse(raw_settings())


@receiver(setting_changed, dispatch_uid="django_shards.conf.get_config")
def _clear_config(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        get_config.cache_clear()
