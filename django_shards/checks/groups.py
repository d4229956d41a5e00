"""Settings checks of each group of ``DJANGO_SHARDS['GROUPS']``: its shape and shards (E002),
its strategy (E003), and the strategy's own checks (``Strategy.check``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.checks import CheckMessage
from django.utils.module_loading import import_string

from django_shards import conf
from django_shards.checks.messages import (
    SETTING,
    error,
    group_obj,
    is_alias,
    type_name,
    warning,
)
from django_shards.strategies.base import Strategy


@dataclass(frozen=True)
class ShardEntry:
    """A well-formed shard of the settings (its group may still be malformed)."""

    group: str
    name: str
    primary: str
    replicas: tuple[str, ...]
    range: Any


def check_groups(groups: Any) -> tuple[list[ShardEntry], list[CheckMessage]]:
    """E002, E003 and the strategy checks; returns every well-formed shard."""
    if not isinstance(groups, Mapping):
        return [], [
            error(
                "E002",
                f"{SETTING}['GROUPS'] must be a dict of group name -> group settings, "
                f"not {type_name(groups)}.",
                'Write "GROUPS": {"users": {"STRATEGY": "hash", "SHARDS": [...]}}.',
            )
        ]
    entries: list[ShardEntry] = []
    messages: list[CheckMessage] = []
    for name, group in groups.items():
        group_entries, group_messages = _check_group(name, group)
        entries += group_entries
        messages += group_messages
    return entries, messages


_GROUP_KEYS = frozenset({"STRATEGY", "OPTIONS", "SHARDS"})
_SHARD_KEYS = frozenset({"NAME", "PRIMARY", "REPLICAS", "RANGE"})


def _check_group(name: Any, group: Any) -> tuple[list[ShardEntry], list[CheckMessage]]:
    obj = group_obj(name)
    malformed: list[CheckMessage] = []
    malformed_warnings: list[CheckMessage] = []

    def e002(msg: str, hint: str) -> None:
        malformed.append(error("E002", msg, hint, obj))

    if not (isinstance(name, str) and name):
        e002(f"Group name {name!r} must be a non-empty str.", "Name groups with strings.")
    if not isinstance(group, Mapping):
        e002(
            f"Group {name!r} must be a dict with STRATEGY, OPTIONS and SHARDS, "
            f"not {type_name(group)}.",
            'Write {"STRATEGY": "hash", "SHARDS": [{"NAME": ..., "PRIMARY": ...}]}.',
        )
        return [], malformed
    unknown = sorted(str(k) for k in group if k not in _GROUP_KEYS)
    if unknown:
        malformed_warnings.append(
            warning(
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
            f"OPTIONS of group {name!r} must be a dict, not {type_name(options)}.",
            'Write "OPTIONS": {...} (strategy options) or leave it out.',
        )
    entries: list[ShardEntry] = []
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
                    warning(
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
) -> tuple[ShardEntry | None, list[CheckMessage]]:
    obj = group_obj(group)
    where = f"SHARDS[{index}] of group {group!r}"
    if not isinstance(shard, Mapping):
        return None, [
            error(
                "E002",
                f"{where} must be a dict with NAME and PRIMARY, not {type_name(shard)}.",
                'Write {"NAME": "s0", "PRIMARY": "s0", "REPLICAS": ["s0_r1"]}.',
                obj,
            )
        ]
    messages = []
    for key in ("NAME", "PRIMARY"):
        if not is_alias(shard.get(key)):
            value = "missing" if key not in shard else repr(shard[key])
            messages.append(
                error(
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
        isinstance(replicas, (list, tuple)) and all(is_alias(r) for r in replicas)
    ):
        if isinstance(replicas, str) and replicas:
            example = f'"REPLICAS": [{replicas!r}] (a list, even for one replica)'
        else:
            replica = f"{shard.get('PRIMARY') or 'primary'}_r1"
            example = f'"REPLICAS": [{replica!r}] (a list of aliases)'
        messages.append(
            error(
                "E002",
                f"REPLICAS of {where} must be a list of alias names, not {replicas!r}.",
                f"Write {example}, or leave it out.",
                obj,
            )
        )
        replicas = ()
    if not (is_alias(shard.get("NAME")) and is_alias(shard.get("PRIMARY"))):
        return None, messages
    rng = shard.get("RANGE")
    entry = ShardEntry(
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
            error(
                "E003",
                f"STRATEGY {value!r} of group {group!r} {problem}.",
                f"Use one of {builtins} or the dotted path of a "
                "django_shards.strategies.base.Strategy subclass.",
                group_obj(group),
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
    except Exception as exc:  # noqa: BLE001 - arbitrary user code ran on import
        return e003(f"cannot be imported: importing {path} raised {exc!r}")
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        return e003(f"names {cls!r}, which is not a subclass of Strategy")
    return cls, []


def _strategy_messages(strategy: type[Strategy], group: conf.GroupSettings) -> list[CheckMessage]:
    """The strategy's own checks; a failing custom check is reported as E003."""

    def e003(problem: str) -> list[CheckMessage]:
        return [
            error(
                "E003",
                f"The check() of strategy {group.strategy} {problem} for group {group.name!r}.",
                "Fix the strategy's check(): it must return a list of CheckMessage.",
                group_obj(group.name),
            )
        ]

    try:
        found = list(strategy.check(group))
    except Exception as exc:  # noqa: BLE001 - a custom strategy's bug must not hide the others
        return e003(f"raised {exc!r}")
    if not all(isinstance(m, CheckMessage) for m in found):
        return e003("returned something other than CheckMessage objects")
    return found
