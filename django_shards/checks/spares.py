"""E017: ``DJANGO_SHARDS["SPARES"]``, the databases ``shard_rebalance`` splits onto.

A list of ``{"PRIMARY": alias, "REPLICAS": [aliases]}``: every alias in ``DATABASES``, none
used by a shard of any group's settings or by the catalog, none twice. Settings only: a
spare a split has since taken is not an error (``shard_rebalance`` skips it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, register

from django_shards import conf
from django_shards.checks.messages import (
    SETTING,
    TAG,
    configured_databases,
    did_you_mean,
    error,
    is_alias,
    type_name,
)

_OBJ = f"{SETTING}['SPARES']"
_KEYS = ("PRIMARY", "REPLICAS")
_HINT = (
    'Write SPARES = [{"PRIMARY": "alias", "REPLICAS": ["alias_r1"]}, ...], each alias a key '
    "of DATABASES that no shard of GROUPS uses."
)


def _e017(msg: str) -> CheckMessage:
    return error("E017", msg, _HINT, obj=_OBJ)


def _settings_aliases(groups: Any) -> dict[str, str]:
    """alias -> "group/shard" for every alias a shard of the settings names."""
    used: dict[str, str] = {}
    if not isinstance(groups, Mapping):
        return used
    for group, spec in groups.items():
        shards = spec.get("SHARDS") if isinstance(spec, Mapping) else None
        for shard in shards if isinstance(shards, Sequence) else ():
            if not isinstance(shard, Mapping):
                continue
            replicas = shard.get("REPLICAS") or ()
            for alias in (shard.get("PRIMARY"), *(replicas if isinstance(replicas, list) else ())):
                if is_alias(alias):
                    used.setdefault(alias, f"{group}/{shard.get('NAME')}")
    return used


def _entry_aliases(i: int, entry: Any) -> tuple[list[str], list[CheckMessage]]:
    """The aliases of ``SPARES[i]``, and what is malformed in it."""
    where = f"{_OBJ}[{i}]"
    if not isinstance(entry, Mapping):
        return [], [
            _e017(f"{where} must be a dict with PRIMARY and REPLICAS, not {type_name(entry)}.")
        ]
    messages = [
        _e017(f"Unknown key {key!r} in {where}{did_you_mean(key, _KEYS)}.")
        for key in entry
        if key not in _KEYS
    ]
    aliases: list[str] = []
    primary = entry.get("PRIMARY")
    if is_alias(primary):
        aliases.append(str(primary))
    else:
        messages.append(_e017(f"{where}['PRIMARY'] must name a database alias, not {primary!r}."))
    replicas = entry.get("REPLICAS") or []
    if not isinstance(replicas, list | tuple) or not all(is_alias(r) for r in replicas):
        messages.append(_e017(f"{where}['REPLICAS'] must be a list of database aliases."))
    else:
        aliases += list(replicas)
    return aliases, messages


def check_spares_setting(raw: Mapping[str, Any]) -> list[CheckMessage]:
    """E017 for the merged settings ``raw``."""
    spares = raw.get("SPARES")
    if spares is None:
        return []
    if not isinstance(spares, list | tuple):
        return [_e017(f"{_OBJ} must be a list of dicts, not {type_name(spares)}.")]
    databases = configured_databases()
    in_use = _settings_aliases(raw.get("GROUPS"))
    catalog = raw.get("CATALOG")
    messages: list[CheckMessage] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(spares):
        aliases, problems = _entry_aliases(i, entry)
        messages += problems
        for alias in aliases:
            where = f"{_OBJ}[{i}]"
            if alias not in databases:
                messages.append(
                    _e017(
                        f"{where} names {alias!r}, which is not in DATABASES"
                        f"{did_you_mean(alias, databases)}."
                    )
                )
            if alias in in_use:
                messages.append(
                    _e017(f"{where} names {alias!r}, already used by shard {in_use[alias]}.")
                )
            if alias == catalog:
                messages.append(_e017(f"{where} names {alias!r}, the catalog."))
            if alias in seen:
                other = "twice" if seen[alias] == i else f"also named by {_OBJ}[{seen[alias]}]"
                messages.append(_e017(f"{where} names {alias!r} {other}."))
            seen.setdefault(alias, i)
    return messages


@register(TAG)
def check_spares(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E017: ``SPARES``. Reads settings only."""
    raw = conf.merged_settings()
    return [] if raw is None else check_spares_setting(raw)
