"""``hash``: point = a 64-bit hash of the key; shards own contiguous ranges of that space.

The point is the first 8 bytes, big-endian, of MD5 of the key's canonical text (``str(key)``,
a model instance: its pk, as UTF-8). With N shards and no explicit ``RANGE`` shard i owns
``[i * 2**64 // N, (i + 1) * 2**64 // N)``, as Vitess keyspace ids do. Shards may instead all
give ``"RANGE": [lo, hi]`` (ints, ``None`` = 0 / 2**64) tiling ``[0, 2**64)`` exactly.

A split halves one interval of the source shard; the new shard takes the upper half
``[lo + (hi - lo) // 2, hi)``. A shard that owns several intervals (after it received
ranges from other splits) gives up half of its *largest* one (the lowest if tied).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.db.models.functions import MD5, Left

from django_shards.conf import DOCS_URL, GroupSettings, ShardSettings
from django_shards.exceptions import NoShardForKey, SplitError
from django_shards.strategies.base import Layout, Strategy, canonical_text, register_drawer
from django_shards.strategies.ownership import hex_intervals_q, key_text

try:  # CPython's own MD5 is about twice as fast as OpenSSL's on short keys; same digest.
    from _md5 import md5
except ImportError:  # pragma: no cover - interpreters built without it
    from hashlib import md5

__all__ = ["SPACE", "HashLayout", "HashStrategy", "hash_point"]

#: Size of the point space: points are ``0 <= point < SPACE``.
SPACE = 2**64

_first_8_bytes = struct.Struct(">Q").unpack_from  # big-endian uint64 at the digest's start


def hash_point(key: Any) -> int:
    """First 8 bytes of MD5 of the key's canonical text, big-endian: ``0 <= point < 2**64``.

    The bytes are :func:`~django_shards.strategies.base.canonical_text`'s.
    """
    return _first_8_bytes(md5(canonical_text(key)).digest())[0]


def _hex(value: int) -> str:
    return f"0x{value:016x}"


class HashLayout(Layout):
    """Intervals ``[lo, hi)`` of ``[0, 2**64)`` and their owners, tiling the space exactly."""

    __slots__ = ("_owners", "_starts", "intervals")

    def __init__(self, intervals: Iterable[Sequence[Any]]) -> None:
        ordered = sorted((int(lo), int(hi), str(name)) for lo, hi, name in intervals)
        expected = 0
        for lo, hi, name in ordered:
            if lo != expected:
                kind = "overlaps the previous range" if lo < expected else "leaves a gap"
                raise ValueError(f"the range of shard {name!r} {kind} at {_hex(lo)}")
            if not lo < hi:
                raise ValueError(f"the range of shard {name!r} is empty")
            expected = hi
        if expected != SPACE:
            raise ValueError(f"no shard owns [{_hex(expected)}, {_hex(SPACE)})")
        self.intervals: tuple[tuple[int, int, str], ...] = tuple(ordered)
        self._starts = [lo for lo, _, _ in ordered]
        self._owners = [name for _, _, name in ordered]

    def locate(self, point: int) -> str:
        if 0 <= point < SPACE:
            return self._owners[bisect_right(self._starts, point) - 1]
        raise NoShardForKey(f"point {point!r} is outside the 64-bit hash space")

    def to_json(self) -> dict[str, Any]:
        return {
            "ranges": [
                {"shard": name, "lo": str(lo), "hi": str(hi)} for lo, hi, name in self.intervals
            ]
        }

    @classmethod
    def from_json(cls, data: Any) -> HashLayout:
        return cls((int(r["lo"]), int(r["hi"]), r["shard"]) for r in data["ranges"])

    def shard_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self._owners))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HashLayout) and self.intervals == other.intervals

    def __hash__(self) -> int:
        return hash(self.intervals)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}=[{_hex(lo)}, {_hex(hi)})" for lo, hi, n in self.intervals)
        return f"HashLayout({parts})"


def even_intervals(names: Sequence[str]) -> list[tuple[int, int, str]]:
    """Shard i of N owns ``[i * 2**64 // N, (i + 1) * 2**64 // N)``."""
    n = len(names)
    return [(i * SPACE // n, (i + 1) * SPACE // n, name) for i, name in enumerate(names)]


def _explicit_bounds(rng: Any) -> tuple[int, int]:
    """``(lo, hi)`` of an explicit RANGE; raises ``ValueError`` with the reason."""
    if not isinstance(rng, (list, tuple)) or len(rng) != 2:
        raise ValueError(f"must be a [lo, hi] pair, got {rng!r}")
    lo, hi = (0 if rng[0] is None else rng[0]), (SPACE if rng[1] is None else rng[1])
    for value in (lo, hi):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"bounds must be ints or None, got {value!r}")
        if not 0 <= value <= SPACE:
            raise ValueError(f"bound {value} is outside [0, 2**64]")
    if not lo < hi:
        raise ValueError(f"is empty: lo {lo} is not below hi {hi}")
    return lo, hi


class HashStrategy(Strategy):
    """Point = MD5's first 8 bytes (big-endian) of the key's text; ranges of 64-bit space."""

    name = "hash"
    ordered = False

    # the module function itself: no extra frame per call
    point = staticmethod(hash_point)

    def shard_for_key(self, layout: Layout, key: Any) -> str:
        # hash_point and locate inlined: every point lies in [0, 2**64), which the layout tiles
        text = b"%d" % key if key.__class__ is int else canonical_text(key)
        point = _first_8_bytes(md5(text).digest())[0]
        return layout._owners[bisect_right(layout._starts, point) - 1]  # type: ignore[attr-defined]

    def initial_layout(self, shards: Sequence[ShardSettings]) -> HashLayout:
        if not shards:
            raise ImproperlyConfigured("a hash group needs at least one shard.")
        if all(spec.range is None for spec in shards):
            return HashLayout(even_intervals([spec.name for spec in shards]))
        try:
            if any(spec.range is None for spec in shards):
                raise ValueError("RANGE is given for some shards but not all")
            return HashLayout((*_explicit_bounds(spec.range), spec.name) for spec in shards)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"hash shards are misconfigured ({exc}); run `manage.py check` for details."
            ) from exc

    def load_layout(self, data: Any) -> HashLayout:
        return HashLayout.from_json(data)

    def locate(self, layout: Layout, point: Any) -> str:
        if 0 <= point < SPACE:
            return layout._owners[bisect_right(layout._starts, point) - 1]  # type: ignore[attr-defined]
        raise NoShardForKey(f"point {point!r} is outside the 64-bit hash space")

    def ownership_q(self, layout: Layout, shard: str, field: str) -> Q:
        """``LEFT(MD5(CAST(field AS CHAR)), 16)`` (the point as 16 lowercase hex digits)
        within one of ``shard``'s intervals, their bounds written the same way."""
        assert isinstance(layout, HashLayout)
        point = Left(MD5(key_text(field)), 16)
        owned = [(lo, hi) for lo, hi, name in layout.intervals if name == shard]
        return hex_intervals_q(point, owned, width=16, space=SPACE, field=field)

    def split(self, layout: Layout, source: str, target: str, at: Any = None) -> HashLayout:
        """``target`` takes the upper half of ``source``'s largest interval.

        ``at`` is not accepted: a hash split always halves (``--at`` is for range groups).
        """
        assert isinstance(layout, HashLayout)
        names = layout.shard_names()
        if source not in names:
            raise SplitError(
                f"shard {source!r} owns no range in this group (shards: {', '.join(names)})."
            )
        if target in names:
            raise SplitError(f"shard {target!r} already owns a range in this group.")
        if at is not None:
            raise SplitError(
                "a hash split always halves the source shard's range; "
                "a split key (--at) only applies to range groups."
            )
        index = max(
            (i for i, iv in enumerate(layout.intervals) if iv[2] == source),
            key=lambda i: (layout.intervals[i][1] - layout.intervals[i][0], -i),
        )
        lo, hi, _ = layout.intervals[index]
        if hi - lo < 2:
            raise SplitError(f"shard {source!r} owns a single point and cannot be halved.")
        mid = lo + (hi - lo) // 2
        intervals = list(layout.intervals)
        intervals[index : index + 1] = [(lo, mid, source), (mid, hi, target)]
        return HashLayout(intervals)

    def share(self, layout: Layout) -> dict[str, float | None]:
        assert isinstance(layout, HashLayout)
        owned: dict[str, int] = {}
        for lo, hi, name in layout.intervals:
            owned[name] = owned.get(name, 0) + hi - lo
        return {name: size / SPACE for name, size in owned.items()}

    def describe(self, layout: Layout) -> dict[str, str]:
        assert isinstance(layout, HashLayout)
        out: dict[str, list[str]] = {}
        for lo, hi, name in layout.intervals:
            out.setdefault(name, []).append(f"[{_hex(lo)}, {_hex(hi)})")
        return {name: ", ".join(parts) for name, parts in out.items()}

    @classmethod
    def check(cls, group: GroupSettings) -> list[CheckMessage]:
        """E024: explicit RANGEs malformed, overlapping, not covering, or only on some shards."""

        def error(msg: str, hint: str) -> Error:
            return Error(
                msg,
                hint=f"{hint} See {DOCS_URL}settings/#hash",
                obj=f"DJANGO_SHARDS['GROUPS'][{group.name!r}]",
                id="django_shards.E024",
            )

        given = [spec for spec in group.shards if spec.range is not None]
        if not given:
            return []
        if len(given) != len(group.shards):
            missing = [spec.name for spec in group.shards if spec.range is None]
            return [
                error(
                    f"RANGE is given for shards {', '.join(repr(s.name) for s in given)} "
                    f"but not for {', '.join(map(repr, missing))}.",
                    "Give a RANGE to every shard of the group, or to none (even split).",
                )
            ]
        errors: list[CheckMessage] = []
        bounds: list[tuple[int, int, str]] = []
        for spec in given:
            try:
                bounds.append((*_explicit_bounds(spec.range), spec.name))
            except ValueError as exc:
                errors.append(
                    error(
                        f"RANGE of shard {spec.name!r} {exc}.",
                        "A RANGE is [lo, hi] of ints in [0, 2**64], lo < hi, None = 0 / 2**64.",
                    )
                )
        if errors:
            return errors
        bounds.sort()
        reach, reach_name = 0, None
        for lo, hi, name in bounds:
            if lo < reach:
                errors.append(
                    error(
                        f"The ranges of shards {reach_name!r} and {name!r} overlap "
                        f"at [{_hex(lo)}, {_hex(min(hi, reach))}).",
                        "Every hash point must belong to exactly one shard.",
                    )
                )
            elif lo > reach:
                after = f" after shard {reach_name!r}" if reach_name else ""
                errors.append(
                    error(
                        f"No shard owns [{_hex(reach)}, {_hex(lo)}): a gap{after} "
                        f"before shard {name!r}.",
                        "The RANGEs must tile [0, 2**64) exactly.",
                    )
                )
            if hi > reach:
                reach, reach_name = hi, name
        if reach < SPACE:
            errors.append(
                error(
                    f"No shard owns [{_hex(reach)}, {_hex(SPACE)}): the space ends uncovered "
                    f"after shard {reach_name!r}.",
                    "The RANGEs must tile [0, 2**64) exactly; use None for the top bound.",
                )
            )
        return errors


register_drawer(HashLayout, "django_shards.strategies.hash_svg.draw_hash")
