"""E016: ``DJANGO_SHARDS["OPERATOR"]``, the account of the online split's binlog stream.

Messages name keys and types, never values: the setting holds passwords."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import CheckMessage

from django_shards import conf
from django_shards.checks.messages import SETTING, did_you_mean, error, type_name

_OBJ = f"{SETTING}['OPERATOR']"
_HINT = (
    'Write OPERATOR = {"USER": ..., "PASSWORD": ...} (optionally "REPLICATION_USER" and '
    '"REPLICATION_PASSWORD"), strings read from the environment, or remove it.'
)


def _e016(msg: str) -> CheckMessage:
    return error("E016", msg, _HINT, obj=_OBJ)


def check_operator(value: Any) -> list[CheckMessage]:
    """E016: None (not configured) or a dict of strings with USER and PASSWORD, and
    REPLICATION_PASSWORD with REPLICATION_USER."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [_e016(f"{_OBJ} must be a dict or None, not {type_name(value)}.")]
    messages = [
        _e016(f"Unknown key {key!r} in {_OBJ}{did_you_mean(key, conf.OPERATOR_KEYS)}.")
        for key in value
        if key not in conf.OPERATOR_KEYS
    ]
    messages += [
        _e016(f"{_OBJ}[{key!r}] must be a string, not {type_name(value[key])}.")
        for key in conf.OPERATOR_KEYS
        if key in value and not isinstance(value[key], str)
    ]
    for user, password in (("USER", "PASSWORD"), ("REPLICATION_USER", "REPLICATION_PASSWORD")):
        if user in value and password not in value:
            messages.append(_e016(f"{_OBJ} has {user} but no {password}."))
        elif password in value and user not in value:
            messages.append(_e016(f"{_OBJ} has {password} but no {user}."))
    if "USER" not in value and "PASSWORD" not in value:
        messages.append(_e016(f"{_OBJ} has no USER: name the operator account."))
    return messages
