"""System checks: every configuration check of django_shards, in one module.

Settings checks read the raw ``DJANGO_SHARDS`` (merged over :data:`conf.DEFAULTS`) and
``DATABASES`` defensively: a malformed setting yields a message, never a traceback. Model
checks (tag ``models``) look at the models that carry a ``ShardedManager``. Only the
checks tagged ``database`` (E030, E031) read a database: the catalog. Every id is
documented in ``docs/checks.md``; strategies add their own (``E020``-``E025``, ``W020``)
through ``Strategy.check``.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.utils.module_loading import import_string

from django_shards import conf, keys
from django_shards.strategies.base import Strategy

TAG = "django_shards"
ROUTER_PATH = "django_shards.router.ShardRouter"
SETTING = conf.SETTING


def _message(
    cls: type[CheckMessage], code: str, msg: str, hint: str, obj: Any = SETTING
) -> CheckMessage:
    return cls(msg, hint=f"{hint} See docs/checks.md#{code.lower()}", obj=obj, id=f"{TAG}.{code}")


def _error(code: str, msg: str, hint: str, obj: Any = SETTING) -> CheckMessage:
    return _message(Error, code, msg, hint, obj)


def _warning(code: str, msg: str, hint: str, obj: Any = SETTING) -> CheckMessage:
    return _message(Warning, code, msg, hint, obj)


def _group_obj(group: Any) -> str:
    return f"{SETTING}['GROUPS'][{group!r}]"


def _type(value: Any) -> str:
    return type(value).__name__


def _did_you_mean(word: Any, choices: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [c for c in choices if isinstance(c, str)], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_alias(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


# -- reading the raw settings ------------------------------------------------------------


def _databases() -> Mapping[str, Any]:
    databases = getattr(settings, "DATABASES", None)
    return databases if isinstance(databases, Mapping) else {}


@dataclass(frozen=True)
class _ShardEntry:
    """A well-formed shard of the settings (its group may still be malformed)."""

    group: str
    name: str
    primary: str
    replicas: tuple[str, ...]
    range: Any


# -- settings checks ---------------------------------------------------------------------


@register(TAG)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E001-E010, W001-W003 and the strategies' own checks. Reads settings only."""
    raw = conf.merged_settings()
    if raw is None:
        return [
            _error(
                "E001",
                f"{SETTING} must be a dict, not {_type(conf.user_settings())}.",
                f'Write {SETTING} = {{"GROUPS": {{...}}, ...}} as in the settings docs.',
            )
        ]
    databases = _databases()
    messages: list[CheckMessage] = []
    messages += _check_unknown_keys(conf.user_settings())
    messages += _check_choices(raw)
    messages += _check_numbers(raw)
    entries, group_messages = _check_groups(raw["GROUPS"])
    messages += group_messages
    messages += _check_aliases(entries, databases)
    messages += _check_catalog(raw["CATALOG"], entries, databases)
    messages += _check_router(raw["GROUPS"])
    messages += _check_gtid(raw["READ_YOUR_WRITES"], entries, databases)
    return messages


def _check_unknown_keys(user: Mapping[Any, Any]) -> list[CheckMessage]:
    known = ", ".join(conf.DEFAULTS)
    return [
        _warning(
            "W001",
            f"Unknown key {key!r} in {SETTING}{_did_you_mean(key, conf.DEFAULTS)}; it is ignored.",
            f"Known keys: {known}.",
        )
        for key in user
        if key not in conf.DEFAULTS
    ]


_CHOICES: dict[str, tuple[str, ...]] = {
    "READ_CONSISTENCY": conf.CONSISTENCY_LEVELS,
    "READ_YOUR_WRITES": conf.READ_YOUR_WRITES_MODES,
    "REPLICA_SELECTION": conf.REPLICA_SELECTIONS,
    "FANOUT": conf.FANOUT_MODES,
}


def _check_choices(raw: Mapping[str, Any]) -> list[CheckMessage]:
    messages = []
    for key, choices in _CHOICES.items():
        value = raw[key]
        if not (isinstance(value, str) and value in choices):
            allowed = ", ".join(repr(c) for c in choices)
            messages.append(
                _error(
                    "E009",
                    f"{SETTING}['{key}'] is {value!r}{_did_you_mean(value, choices)}; "
                    f"it must be one of {allowed}.",
                    f"Set {key} to one of {allowed}.",
                )
            )
    return messages


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_numbers(raw: Mapping[str, Any]) -> list[CheckMessage]:
    problems: list[tuple[str, str]] = []
    value = raw["PIN_AFTER_WRITE_SECONDS"]
    if not (_is_number(value) and value >= 0):
        problems.append(("PIN_AFTER_WRITE_SECONDS", "a number >= 0 (0 turns pinning off)"))
    for key in ("MAX_REPLICA_LAG_SECONDS", "FANOUT_TIMEOUT_SECONDS", "MAP_LEASE_SECONDS"):
        value = raw[key]
        if not (_is_number(value) and value > 0):
            problems.append((key, "a number > 0"))
    value = raw["FANOUT_WORKERS"]
    if not (_is_int(value) and value >= 1):
        problems.append(("FANOUT_WORKERS", "an int >= 1"))
    value = raw["NODE_ID"]
    if not (value is None or (_is_int(value) and 0 <= value <= 1023)):
        problems.append(("NODE_ID", "None (derived) or an int from 0 to 1023"))
    return [
        _error(
            "E010",
            f"{SETTING}['{key}'] is {raw[key]!r}; it must be {expected}.",
            f"Set {key} to {expected}, or remove it to use the default {conf.DEFAULTS[key]!r}.",
        )
        for key, expected in problems
    ]


def _check_groups(groups: Any) -> tuple[list[_ShardEntry], list[CheckMessage]]:
    """E002, E003 and the strategy checks; returns every well-formed shard."""
    if not isinstance(groups, Mapping):
        return [], [
            _error(
                "E002",
                f"{SETTING}['GROUPS'] must be a dict of group name -> group settings, "
                f"not {_type(groups)}.",
                'Write "GROUPS": {"users": {"STRATEGY": "hash", "SHARDS": [...]}}.',
            )
        ]
    entries: list[_ShardEntry] = []
    messages: list[CheckMessage] = []
    for name, group in groups.items():
        group_entries, group_messages = _check_group(name, group)
        entries += group_entries
        messages += group_messages
    return entries, messages


_GROUP_KEYS = frozenset({"STRATEGY", "OPTIONS", "SHARDS"})
_SHARD_KEYS = frozenset({"NAME", "PRIMARY", "REPLICAS", "RANGE"})


def _check_group(name: Any, group: Any) -> tuple[list[_ShardEntry], list[CheckMessage]]:
    obj = _group_obj(name)
    malformed: list[CheckMessage] = []
    malformed_warnings: list[CheckMessage] = []

    def e002(msg: str, hint: str) -> None:
        malformed.append(_error("E002", msg, hint, obj))

    if not (isinstance(name, str) and name):
        e002(f"Group name {name!r} must be a non-empty str.", "Name groups with strings.")
    if not isinstance(group, Mapping):
        e002(
            f"Group {name!r} must be a dict with STRATEGY, OPTIONS and SHARDS, not {_type(group)}.",
            'Write {"STRATEGY": "hash", "SHARDS": [{"NAME": ..., "PRIMARY": ...}]}.',
        )
        return [], malformed
    unknown = sorted(str(k) for k in group if k not in _GROUP_KEYS)
    if unknown:
        malformed_warnings.append(
            _warning(
                "W004",
                f"Group {name!r} has unknown key(s) {', '.join(map(repr, unknown))}; they are "
                f"ignored (known: {', '.join(sorted(_GROUP_KEYS))}).",
                "Fix the spelling or remove the key.",
                obj,
            )
        )
    options = group.get("OPTIONS")
    if options is not None and not isinstance(options, Mapping):
        e002(
            f"OPTIONS of group {name!r} must be a dict, not {_type(options)}.",
            'Write "OPTIONS": {...} (strategy options) or leave it out.',
        )
    entries: list[_ShardEntry] = []
    shards = group.get("SHARDS")
    if not isinstance(shards, (list, tuple)) or not shards:
        what = "missing" if shards is None else f"{shards!r}"
        e002(
            f"SHARDS of group {name!r} must be a non-empty list of shards, not {what}.",
            'Write "SHARDS": [{"NAME": "s0", "PRIMARY": "s0", "REPLICAS": ["s0_r1"]}, ...].',
        )
    else:
        for index, shard in enumerate(shards):
            entry, problems = _check_shard(name, index, shard)
            malformed += problems
            extra = (
                sorted(str(k) for k in shard if k not in _SHARD_KEYS)
                if isinstance(shard, Mapping)
                else []
            )
            if extra:
                malformed_warnings.append(
                    _warning(
                        "W004",
                        f"SHARDS[{index}] of group {name!r} has unknown key(s) "
                        f"{', '.join(map(repr, extra))}; they are ignored (known: "
                        f"{', '.join(sorted(_SHARD_KEYS))}).",
                        "Fix the spelling (e.g. REPLICAS, not REPLICA) or remove the key.",
                        obj,
                    )
                )
            if entry is not None:
                entries.append(entry)
    strategy, strategy_messages = _load_strategy(name, group.get("STRATEGY", "hash"))
    if strategy is None or malformed:
        return entries, malformed + malformed_warnings + strategy_messages
    settings_ = conf.GroupSettings(
        name=name,
        strategy=conf.strategy_path(group.get("STRATEGY", "hash")),
        options=dict(options or {}),
        shards=tuple(
            conf.ShardSettings(conf.Shard(e.name, e.primary, e.replicas), range=e.range)
            for e in entries
        ),
    )
    return entries, malformed_warnings + _strategy_messages(strategy, settings_)


def _check_shard(
    group: Any, index: int, shard: Any
) -> tuple[_ShardEntry | None, list[CheckMessage]]:
    obj = _group_obj(group)
    where = f"SHARDS[{index}] of group {group!r}"
    if not isinstance(shard, Mapping):
        return None, [
            _error(
                "E002",
                f"{where} must be a dict with NAME and PRIMARY, not {_type(shard)}.",
                'Write {"NAME": "s0", "PRIMARY": "s0", "REPLICAS": ["s0_r1"]}.',
                obj,
            )
        ]
    messages = []
    for key in ("NAME", "PRIMARY"):
        if not _is_alias(shard.get(key)):
            value = "missing" if key not in shard else repr(shard[key])
            messages.append(
                _error(
                    "E002",
                    f"{key} of {where} must be a non-empty str, not {value}.",
                    "Every shard needs a NAME and a PRIMARY alias of DATABASES.",
                    obj,
                )
            )
    replicas = shard.get("REPLICAS")
    if replicas is None:
        replicas = ()
    elif isinstance(replicas, str) or not (
        isinstance(replicas, (list, tuple)) and all(_is_alias(r) for r in replicas)
    ):
        if isinstance(replicas, str) and replicas:
            example = f'"REPLICAS": [{replicas!r}] (a list, even for one replica)'
        else:
            replica = f"{shard.get('PRIMARY') or 'primary'}_r1"
            example = f'"REPLICAS": [{replica!r}] (a list of aliases)'
        messages.append(
            _error(
                "E002",
                f"REPLICAS of {where} must be a list of alias names, not {replicas!r}.",
                f"Write {example}, or leave it out.",
                obj,
            )
        )
        replicas = ()
    if not (_is_alias(shard.get("NAME")) and _is_alias(shard.get("PRIMARY"))):
        return None, messages
    rng = shard.get("RANGE")
    entry = _ShardEntry(
        group=group,
        name=shard["NAME"],
        primary=shard["PRIMARY"],
        replicas=tuple(replicas),
        range=tuple(rng) if isinstance(rng, (list, tuple)) else rng,
    )
    return entry, messages


def _load_strategy(group: Any, value: Any) -> tuple[type[Strategy] | None, list[CheckMessage]]:
    """The group's strategy class, or None and an E003."""
    builtins = ", ".join(conf.BUILTIN_STRATEGIES)

    def e003(problem: str) -> tuple[None, list[CheckMessage]]:
        return None, [
            _error(
                "E003",
                f"STRATEGY {value!r} of group {group!r} {problem}.",
                f"Use one of {builtins} or the dotted path of a "
                "django_shards.strategies.base.Strategy subclass.",
                _group_obj(group),
            )
        ]

    if not (isinstance(value, str) and value):
        return e003("is not a strategy name")
    path = conf.strategy_path(value)
    try:
        cls = import_string(path)
    except ImportError as exc:
        if value in conf.BUILTIN_STRATEGIES:
            return e003(f"is built in but {path} cannot be imported ({exc})")
        return e003(f"is neither a built-in strategy nor an importable path ({exc})")
    except Exception as exc:  # arbitrary user code ran on import
        return e003(f"cannot be imported: importing {path} raised {exc!r}")
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        return e003(f"names {cls!r}, which is not a subclass of Strategy")
    return cls, []


def _strategy_messages(strategy: type[Strategy], group: conf.GroupSettings) -> list[CheckMessage]:
    """The strategy's own checks; a failing custom check is reported as E003."""

    def e003(problem: str) -> list[CheckMessage]:
        return [
            _error(
                "E003",
                f"The check() of strategy {group.strategy} {problem} for group {group.name!r}.",
                "Fix the strategy's check(): it must return a list of CheckMessage.",
                _group_obj(group.name),
            )
        ]

    try:
        found = list(strategy.check(group))
    except Exception as exc:  # a custom strategy's bug must not hide the other checks
        return e003(f"raised {exc!r}")
    if not all(isinstance(m, CheckMessage) for m in found):
        return e003("returned something other than CheckMessage objects")
    return found


def _where(e: _ShardEntry) -> str:
    return f"shard {e.name!r} of group {e.group!r}"


def _check_aliases(
    entries: Sequence[_ShardEntry], databases: Mapping[str, Any]
) -> list[CheckMessage]:
    """E004 unknown aliases, E005 duplicates in a group, E006 replica/primary, E007 MIRROR."""
    messages: list[CheckMessage] = []
    primaries: dict[str, list[_ShardEntry]] = {}
    replicas: dict[str, list[_ShardEntry]] = {}
    for e in entries:
        primaries.setdefault(e.primary, []).append(e)
        for alias in dict.fromkeys(e.replicas):
            replicas.setdefault(alias, []).append(e)

    known = ", ".join(map(repr, databases)) or "none"
    for alias in sorted((primaries.keys() | replicas.keys()) - databases.keys()):
        uses = [f"PRIMARY of {_where(e)}" for e in primaries.get(alias, ())]
        uses += [f"REPLICAS of {_where(e)}" for e in replicas.get(alias, ())]
        first = (primaries.get(alias) or replicas[alias])[0]
        messages.append(
            _error(
                "E004",
                f"Alias {alias!r} ({'; '.join(uses)}) is not in DATABASES"
                f"{_did_you_mean(alias, databases)}.",
                f"Add {alias!r} to DATABASES or fix the alias (DATABASES has {known}).",
                _group_obj(first.group),
            )
        )

    by_group: dict[Any, list[_ShardEntry]] = {}
    for e in entries:
        by_group.setdefault(e.group, []).append(e)
    for group, shards in by_group.items():
        messages += _check_duplicates(group, shards)

    for alias in sorted(replicas.keys() & primaries.keys()):
        as_replica, as_primary = replicas[alias][0], primaries[alias][0]
        messages.append(
            _error(
                "E006",
                f"Alias {alias!r} is a replica ({_where(as_replica)}) and a primary "
                f"({_where(as_primary)}).",
                "Writes would go to a replica: give each replica its own DATABASES alias.",
                _group_obj(as_replica.group),
            )
        )

    for alias, shards in replicas.items():
        if alias in databases and alias not in primaries:  # a primary too: E006 says so
            messages += _check_mirror(alias, shards, databases[alias])
    return messages


def _check_duplicates(group: Any, shards: Sequence[_ShardEntry]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    names: set[str] = set()
    owners: dict[str, str] = {}  # alias -> the first shard of the group using it
    for e in shards:
        if e.name in names:
            messages.append(
                _error(
                    "E005",
                    f"Shard NAME {e.name!r} appears twice in group {group!r}.",
                    "Give every shard of a group its own NAME.",
                    _group_obj(group),
                )
            )
        names.add(e.name)
        seen_here: set[str] = set()
        for alias in (e.primary, *e.replicas):
            if alias in seen_here:
                if alias != e.primary:
                    messages.append(
                        _error(
                            "E005",
                            f"Shard {e.name!r} of group {group!r} lists replica {alias!r} twice.",
                            "List each replica alias once.",
                            _group_obj(group),
                        )
                    )
                continue
            seen_here.add(alias)
            owner = owners.setdefault(alias, e.name)
            if owner != e.name:
                messages.append(
                    _error(
                        "E005",
                        f"Alias {alias!r} is used by shards {owner!r} and {e.name!r} of group "
                        f"{group!r}.",
                        "Each shard of a group needs its own databases: one alias, one shard.",
                        _group_obj(group),
                    )
                )
    return messages


def _check_mirror(alias: str, shards: Sequence[_ShardEntry], database: Any) -> list[CheckMessage]:
    """E007: a replica's test database must mirror its shard's primary."""
    test = database.get("TEST") if isinstance(database, Mapping) else None
    mirror = test.get("MIRROR") if isinstance(test, Mapping) else None
    expected = [p for p in dict.fromkeys(e.primary for e in shards) if p != alias]
    if not expected or expected == [mirror]:
        return []  # listed as its own shard's replica: E005/E006 report that
    where = f"Replica {alias!r} of {'; '.join(_where(e) for e in shards)}"
    if len(expected) > 1:
        msg = f"{where} serves different primaries ({', '.join(map(repr, expected))})."
    elif mirror is None:
        msg = f"{where} has no TEST['MIRROR'] in DATABASES."
    else:
        msg = f"{where} mirrors {mirror!r}, not its shard's primary {expected[0]!r}."
    return [
        _error(
            "E007",
            msg,
            f'Set DATABASES[{alias!r}]["TEST"] = {{"MIRROR": {expected[0]!r}}} so tests read '
            "the primary's test database (a replica follows exactly one primary).",
            _group_obj(shards[0].group),
        )
    ]


def _check_catalog(
    catalog: Any, entries: Sequence[_ShardEntry], databases: Mapping[str, Any]
) -> list[CheckMessage]:
    hint = "Set CATALOG to a primary alias of DATABASES (usually 'default')."
    if not (_is_alias(catalog) and catalog in databases):
        return [
            _error(
                "E008",
                f"{SETTING}['CATALOG'] is {catalog!r}, which is not an alias of DATABASES"
                f"{_did_you_mean(catalog, databases)}.",
                hint,
            )
        ]
    for e in entries:
        if catalog in e.replicas:
            return [
                _error(
                    "E008",
                    f"{SETTING}['CATALOG'] {catalog!r} is a replica (shard {e.name!r} of group "
                    f"{e.group!r}); the catalog is written to.",
                    hint,
                )
            ]
    return []


def _is_shard_router(entry: Any) -> bool:
    if isinstance(entry, str):
        if entry == ROUTER_PATH:
            return True
        try:
            entry = import_string(entry)
        except Exception:
            return False
    cls = entry if isinstance(entry, type) else type(entry)
    return any(f"{c.__module__}.{c.__qualname__}" == ROUTER_PATH for c in cls.__mro__)


def _check_router(groups: Any) -> list[CheckMessage]:
    if not (isinstance(groups, Mapping) and groups):
        return []
    routers = getattr(settings, "DATABASE_ROUTERS", None)
    if isinstance(routers, (list, tuple)) and any(_is_shard_router(r) for r in routers):
        return []
    return [
        _warning(
            "W002",
            f"DATABASE_ROUTERS does not contain {ROUTER_PATH!r}, but {SETTING} has groups; "
            "save(), delete(), related objects and migrate are not routed to shards.",
            f"Add {ROUTER_PATH!r} to DATABASE_ROUTERS.",
            "DATABASE_ROUTERS",
        )
    ]


def _check_gtid(
    mode: Any, entries: Sequence[_ShardEntry], databases: Mapping[str, Any]
) -> list[CheckMessage]:
    if mode != "gtid":
        return []
    not_mysql = sorted(
        {
            alias
            for e in entries
            for alias in e.replicas
            if alias in databases and "mysql" not in _engine(databases[alias])
        }
    )
    if not not_mysql:
        return []
    return [
        _warning(
            "W003",
            f"READ_YOUR_WRITES is 'gtid' but replicas {', '.join(map(repr, not_mysql))} are not "
            "MySQL/MariaDB; reads after a write fall back to the time window there.",
            "Use MariaDB replicas for GTID tracking, or set READ_YOUR_WRITES to 'time'.",
        )
    ]


def _engine(database: Any) -> str:
    engine = database.get("ENGINE") if isinstance(database, Mapping) else None
    return engine if isinstance(engine, str) else ""


# -- the catalog: checks that read it (tag database) ---------------------------------------


@register(Tags.database, TAG)
def check_catalog_agrees(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """E030 settings that place keys otherwise than the catalog, E031 aliases the catalog
    names that DATABASES lacks. Reads the catalog, so it runs only when asked for the
    catalog's database (``check --database``, ``migrate``); a catalog that cannot be read
    (not migrated yet, or down) is not this check's business."""
    from django.core.exceptions import ImproperlyConfigured
    from django.db import DatabaseError

    from django_shards import catalog

    try:
        config = conf.get_config()
    except ImproperlyConfigured:
        return []  # the settings checks say why
    if not databases or config.catalog not in databases:
        return []
    messages: list[CheckMessage] = []
    try:
        for name, group in config.groups.items():
            found = catalog.settings_disagreement(group)
            if found is None:
                continue
            version, differences = found
            messages.append(
                _error(
                    "E030",
                    f"The settings of shard group {name!r} place keys otherwise than the "
                    f"catalog's map (version {version}): {'; '.join(differences)}. Routing "
                    "follows the catalog; these settings would strand existing rows.",
                    "Put the settings back as the catalog has them; to change placement, "
                    "split shards with `manage.py shard_split` (it moves the rows).",
                    _group_obj(name),
                )
            )
        missing = catalog.missing_aliases(_databases())
    except (DatabaseError, ImproperlyConfigured):
        return messages  # what could be read; the catalog's failure shows elsewhere
    known = ", ".join(map(repr, _databases())) or "none"
    for alias, uses in sorted(missing.items()):
        where = "; ".join(
            f"{role} of shard {shard!r} of group {group!r}" for group, shard, role in uses
        )
        messages.append(
            _error(
                "E031",
                f"Alias {alias!r} ({where} in the catalog's map) is not in DATABASES: queries "
                "routed to it fail.",
                f"Add {alias!r} to DATABASES (DATABASES has {known}); the catalog, not the "
                "settings, says which databases serve each shard.",
                _group_obj(uses[0][0]),
            )
        )
    return messages


# -- model checks ------------------------------------------------------------------------


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
            _error(
                "E011",
                f"{label} is sharded in group {sk.group!r}, which is not in "
                f"{SETTING}['GROUPS']{_did_you_mean(sk.group, groups)}.",
                f"Add the group to GROUPS or fix ShardedManager(group=...) (groups: {names}).",
                model,
            )
        )
    try:
        field = sk.field
    except (FieldDoesNotExist, TypeError):
        names = [f.name for f in model._meta.concrete_fields]
        return messages + [
            _error(
                "E012",
                f"The shard key {sk.field_name!r} of {label} is not a field of the model"
                f"{_did_you_mean(sk.field_name, names)}.",
                "Name a concrete field (or 'pk') in ShardedManager(key=...).",
                model,
            )
        ]
    if field not in model._meta.concrete_fields:
        return messages + [
            _error(
                "E012",
                f"The shard key {sk.field_name!r} of {label} is not a column of the model's "
                f"table ({_type(field)}).",
                "Name a concrete field (or 'pk') in ShardedManager(key=...).",
                model,
            )
        ]
    if isinstance(field, models.AutoField):
        messages.append(
            _error(
                "E013",
                f"The shard key {sk.field_name!r} of {label} is a {_type(field)}: its value is "
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
            _error(
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
            _error(
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
