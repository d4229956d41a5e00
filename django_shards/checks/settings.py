"""The settings check: ``DJANGO_SHARDS`` (merged over ``conf.DEFAULTS``) and ``DATABASES``,
read defensively: a malformed setting yields a message, never a traceback."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, register

from django_shards import conf
from django_shards.checks.databases import (
    check_aliases,
    check_catalog_alias,
    check_gtid,
    check_router,
)
from django_shards.checks.groups import check_groups
from django_shards.checks.messages import (
    SETTING,
    TAG,
    configured_databases,
    did_you_mean,
    error,
    type_name,
    warning,
)
from django_shards.checks.operator import check_operator


@register(TAG)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E001-E010, E016, W001-W003 and the strategies' own checks. Reads settings only."""
    raw = conf.merged_settings()
    if raw is None:
        return [
            error(
                "E001",
                f"{SETTING} must be a dict, not {type_name(conf.user_settings())}.",
                f'Write {SETTING} = {{"GROUPS": {{...}}, ...}} as in the settings docs.',
            )
        ]
    databases = configured_databases()
    messages: list[CheckMessage] = []
    messages += _check_unknown_keys(conf.user_settings())
    messages += _check_choices(raw)
    messages += _check_numbers(raw)
    entries, group_messages = check_groups(raw["GROUPS"])
    messages += group_messages
    messages += check_aliases(entries, databases)
    messages += check_catalog_alias(raw["CATALOG"], entries, databases)
    messages += check_router(raw["GROUPS"])
    messages += check_gtid(raw["READ_YOUR_WRITES"], entries, databases)
    messages += check_operator(raw["OPERATOR"])
    return messages


def _check_unknown_keys(user: Mapping[Any, Any]) -> list[CheckMessage]:
    known = ", ".join(conf.DEFAULTS)
    return [
        warning(
            "W001",
            f"Unknown key {key!r} in {SETTING}{did_you_mean(key, conf.DEFAULTS)}; it is ignored.",
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
                error(
                    "E009",
                    f"{SETTING}['{key}'] is {value!r}{did_you_mean(value, choices)}; "
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
    for key in (
        "MAX_REPLICA_LAG_SECONDS",
        "FANOUT_TIMEOUT_SECONDS",
        "MAP_LEASE_SECONDS",
        "LOAD_FLUSH_SECONDS",
        "LOAD_WINDOW_SECONDS",
    ):
        value = raw[key]
        if not (_is_number(value) and value > 0):
            problems.append((key, "a number > 0"))
    value = raw["HOT_SHARD_FACTOR"]
    if not (_is_number(value) and value > 1):
        problems.append(("HOT_SHARD_FACTOR", "a number > 1 (times the group's mean)"))
    value = raw["FANOUT_WORKERS"]
    if not (_is_int(value) and value >= 1):
        problems.append(("FANOUT_WORKERS", "an int >= 1"))
    value = raw["NODE_ID"]
    if not (value is None or (_is_int(value) and 0 <= value <= 1023)):
        problems.append(("NODE_ID", "None (derived) or an int from 0 to 1023"))
    return [
        error(
            "E010",
            f"{SETTING}['{key}'] is {raw[key]!r}; it must be {expected}.",
            f"Set {key} to {expected}, or remove it to use the default {conf.DEFAULTS[key]!r}.",
        )
        for key, expected in problems
    ]
