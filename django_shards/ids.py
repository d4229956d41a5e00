"""Snowflake ids: 64-bit, cluster-unique, known before the row is written.

41 bits of milliseconds since 2020-01-01 UTC, 10 bits of node id, 12 bits of sequence.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from typing import Any

from django.core.signals import setting_changed
from django.db import models
from django.dispatch import receiver

from django_shards.conf import WATCHED_SETTINGS, get_config

EPOCH_MS = 1577836800000  # 2020-01-01T00:00:00Z
NODE_BITS = 10
SEQUENCE_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1


def derived_node_id() -> int:
    """A node id from host name and process id (set NODE_ID to make it explicit)."""
    text = f"{socket.gethostname()}:{os.getpid()}".encode()
    return int.from_bytes(hashlib.sha1(text).digest()[:2], "big") & MAX_NODE


class SnowflakeGenerator:
    """Thread-safe, unique and strictly increasing ids for one node.

    If the wall clock steps back, ids keep increasing: the generator stays on the last
    millisecond it used (borrowing the next one when its sequence runs out) until the
    clock catches up.
    """

    def __init__(self, node_id: int, clock: Any = time.time) -> None:
        if not 0 <= node_id <= MAX_NODE:
            raise ValueError(f"Snowflake node id must be in 0..{MAX_NODE}, got {node_id!r}.")
        self.node_id = node_id
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = -1
        self._sequence = 0

    def __call__(self) -> int:
        with self._lock:
            now = int(self._clock() * 1000) - EPOCH_MS
            if now > self._last_ms:
                self._last_ms, self._sequence = now, 0
            else:  # same millisecond, or the clock stepped back
                self._sequence += 1
                if self._sequence > MAX_SEQUENCE:
                    self._last_ms, self._sequence = self._last_ms + 1, 0
            return (
                (self._last_ms << (NODE_BITS + SEQUENCE_BITS))
                | (self.node_id << SEQUENCE_BITS)
                | self._sequence
            )


_generator: SnowflakeGenerator | None = None
_generator_lock = threading.Lock()


def _current_generator() -> SnowflakeGenerator:
    global _generator
    gen = _generator
    if gen is None:
        with _generator_lock:
            if _generator is None:
                node = get_config().node_id
                _generator = SnowflakeGenerator(derived_node_id() if node is None else node)
            gen = _generator
    return gen


def reset_generator() -> None:
    """Forget the generator (NODE_ID changed); the next id builds a new one."""
    global _generator
    with _generator_lock:
        _generator = None


@receiver(setting_changed, dispatch_uid="django_shards.ids.reset_generator")
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        reset_generator()


def next_snowflake() -> int:
    """A new Snowflake id for this node."""
    return _current_generator()()


def snowflake_parts(value: int) -> dict[str, int]:
    """Split an id into ``ms`` (unix milliseconds), ``node`` and ``sequence``."""
    return {
        "ms": (value >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS,
        "node": (value >> SEQUENCE_BITS) & MAX_NODE,
        "sequence": value & MAX_SEQUENCE,
    }


class SnowflakeField(models.BigIntegerField):
    """A ``BigIntegerField`` whose value is a Snowflake id set when the instance is made."""

    description = "Snowflake id (64-bit, cluster-unique)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("default", next_snowflake)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> tuple[Any, ...]:
        name, _path, args, kwargs = super().deconstruct()
        if kwargs.get("default") is next_snowflake:
            del kwargs["default"]
        if kwargs.get("editable") is False:
            del kwargs["editable"]
        return name, "django_shards.ids.SnowflakeField", args, kwargs
