"""What every check message of django_shards shares: its id, its hint's link to the docs,
and small helpers to word it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_shards import conf

#: the documentation online; a check's hint links to its section of ``checks/``
DOCS_URL = conf.DOCS_URL
TAG = "django_shards"
SETTING = conf.SETTING


def docs_link(code: str) -> str:
    """The address of check ``code``'s section of the docs (``docs/checks.md``)."""
    return f"{DOCS_URL}checks/#{code.lower()}"


def _message(
    cls: type[Error] | type[Warning], code: str, msg: str, hint: str, obj: Any = SETTING
) -> CheckMessage:
    return cls(msg, hint=f"{hint} See {docs_link(code)}", obj=obj, id=f"{TAG}.{code}")


def error(code: str, msg: str, hint: str, obj: Any = SETTING) -> CheckMessage:
    """An ``Error`` with id ``django_shards.<code>``; the hint ends with its docs link."""
    return _message(Error, code, msg, hint, obj)


def warning(code: str, msg: str, hint: str, obj: Any = SETTING) -> CheckMessage:
    """A ``Warning`` with id ``django_shards.<code>``; the hint ends with its docs link."""
    return _message(Warning, code, msg, hint, obj)


def group_obj(group: Any) -> str:
    """The object a message about ``group`` names: its place in the setting."""
    return f"{SETTING}['GROUPS'][{group!r}]"


def type_name(value: Any) -> str:
    return type(value).__name__


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [c for c in choices if isinstance(c, str)], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_alias(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def configured_databases() -> Mapping[str, Any]:
    """``DATABASES``, or an empty dict when it is not a dict."""
    databases = getattr(settings, "DATABASES", None)
    return databases if isinstance(databases, Mapping) else {}
