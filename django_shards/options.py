"""A sharded queryset's routing options besides its filters (``for_key()``,
``on_shard()``, ``strong()``, ``fanout()`` ...): one immutable value that every clone
shares."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["with_consistency"]


class _Unset:
    """No ``for_key()``: a singleton that survives pickling."""

    def __reduce__(self) -> str:
        return "_UNSET"


_UNSET: Any = _Unset()


class _Options(NamedTuple):
    """How a queryset routes, besides its filters."""

    shard_name: str | None = None  # on_shard()
    pinned_key: Any = _UNSET  # for_key()
    consistency: str | None = None  # strong(), eventual(), consistency()
    fanout: bool = False  # fanout()
    allow_partial: bool = False  # allow_partial()
    # a routed bulk_create()/bulk_update() checked its objects' keys and wrote their lookup
    # entries: its per-shard call need not
    keys_checked: bool = False


_NO_OPTIONS = _Options()
#: (option, value) -> _NO_OPTIONS with that one option set (strong(), fanout() ...)
_ONE_OPTION: dict[tuple[str, Any], _Options] = {}
_STRONG = _ONE_OPTION["consistency", "strong"] = _Options(consistency="strong")
_EVENTUAL = _ONE_OPTION["consistency", "eventual"] = _Options(consistency="eventual")


def with_consistency(options: _Options, level: str) -> _Options:
    """``options`` with consistency ``level`` (``"strong"`` or ``"eventual"``)."""
    if options is _NO_OPTIONS:
        return _STRONG if level == "strong" else _EVENTUAL
    return options._replace(consistency=level)
