"""Per-context routing state: the consistency level and read-your-writes pins.

Everything lives in ``contextvars`` so it is right in threads, nested blocks and async
views; every context manager restores what it found.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType

from django_shards.conf import CONSISTENCY_LEVELS

_consistency: ContextVar[str | None] = ContextVar("django_shards_consistency", default=None)
# primary alias -> (wall-clock expiry, GTID position written or None)
_pins: ContextVar[Mapping[str, tuple[float, str | None]]] = ContextVar(
    "django_shards_pins", default=MappingProxyType({})
)


def validate_level(level: str) -> str:
    if level not in CONSISTENCY_LEVELS:
        raise ValueError(
            f"Unknown consistency {level!r}; use one of {', '.join(CONSISTENCY_LEVELS)}."
        )
    return level


@contextlib.contextmanager
def consistency(level: str) -> Iterator[None]:
    """Within the block, default reads are ``"strong"`` (primary) or ``"eventual"``."""
    token = _consistency.set(validate_level(level))
    try:
        yield
    finally:
        _consistency.reset(token)


#: ``current_consistency()``: the level set by an enclosing :func:`consistency` block, or
#: None (the context variable's own method: no Python call on every default read)
current_consistency: Callable[[], str | None] = _consistency.get


def pin(primary: str, seconds: float, gtid: str | None = None) -> None:
    """Send default reads of ``primary``'s shard to the primary for ``seconds``."""
    if seconds <= 0:
        return
    pins = dict(_pins.get())
    expiry = time.time() + seconds
    old = pins.get(primary)
    if old is not None and old[0] > expiry and gtid is None:
        return
    pins[primary] = (expiry, gtid)
    _pins.set(pins)


def pinned(primary: str) -> tuple[float, str | None] | None:
    """The live pin of ``primary`` (expiry, gtid), or None."""
    entry = _pins.get().get(primary)
    if entry is None or entry[0] <= time.time():
        return None
    return entry


#: ``pins()``: every pin of this context, live or expired (primary alias -> (expiry, gtid));
#: ``pins().get(alias) is None`` is the cheap "not pinned" of the hot path
pins: Callable[[], Mapping[str, tuple[float, str | None]]] = _pins.get


def drop_expired_pins() -> None:
    """Forget this context's expired pins (a default read then finds none to check)."""
    now = time.time()
    pins = _pins.get()
    if any(entry[0] <= now for entry in pins.values()):
        _pins.set({alias: entry for alias, entry in pins.items() if entry[0] > now})


def current_pins() -> dict[str, tuple[float, str | None]]:
    """Live pins, for carrying them across requests."""
    now = time.time()
    return {alias: entry for alias, entry in _pins.get().items() if entry[0] > now}


def clear_pins() -> None:
    _pins.set({})


def push_pins(pins: Mapping[str, tuple[float, str | None]]) -> Token:
    """Start a scope (a request) with ``pins``; undo with :func:`pop_pins`."""
    return _pins.set(dict(pins))


def pop_pins(token: Token) -> None:
    _pins.reset(token)
