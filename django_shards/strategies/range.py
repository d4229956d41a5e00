"""``range``: the key itself is the point; shards own half-open intervals ``[lo, hi)``.

Keys keep their order, so ``__gt``/``__gte``/``__lt``/``__lte``/``__range`` queries visit
only the shards whose intervals they overlap. Bounds may be ints, strings, dates,
datetimes, decimals or UUIDs (one type per group); ``None`` is an unbounded end. Finite
outer bounds are allowed: a key outside every interval raises ``NoShardForKey``.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured
from django.db.models import F, Q
from django.db.models.lookups import GreaterThanOrEqual, LessThan

from django_shards.conf import DOCS_URL, GroupSettings, ShardSettings
from django_shards.exceptions import NoShardForKey, SplitError
from django_shards.strategies.base import (
    Layout,
    StoredKeys,
    Strategy,
    canonical_key,
    register_drawer,
)
from django_shards.strategies.ownership import CodePointOrder, merged, nothing_q

__all__ = ["RangeLayout", "RangeStrategy", "decode_bound", "encode_bound"]


#: One interval of the map: ``(lo, hi, shard name)``, ``None`` meaning unbounded.
Interval = tuple[Any, Any, str]

# Keys of these types are their own point; anything else goes through canonical_key.
_PLAIN_KEY_TYPES = frozenset({int, str, datetime.date, datetime.datetime})


# --- bounds in JSON --------------------------------------------------------------------


def encode_bound(value: Any) -> Any:
    """A JSON form of one bound that :func:`decode_bound` turns back into an equal value.

    ``None`` stays ``null``; everything else is tagged, e.g. ``{"t": "date", "v": "2024-01-01"}``.
    Raises ``TypeError`` for a type the map cannot store.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a range bound cannot be a bool")
    if isinstance(value, int):
        return {"t": "int", "v": str(int(value))}
    if isinstance(value, str):
        return {"t": "str", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": repr(value)}
    if isinstance(value, decimal.Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, datetime.datetime):  # before date: datetime subclasses date
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"t": "uuid", "v": str(value)}
    raise TypeError(
        f"a range bound of type {type(value).__name__} cannot be stored in the shard map; "
        "use ints, strings, dates, datetimes, decimals or UUIDs"
    )


_DECODERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "str": str,
    "float": float,
    "decimal": decimal.Decimal,
    "datetime": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "uuid": uuid.UUID,
}


def decode_bound(data: Any) -> Any:
    """The value stored by :func:`encode_bound`."""
    if data is None:
        return None
    try:
        return _DECODERS[data["t"]](data["v"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a stored range bound: {data!r}") from exc


def format_bound(value: Any, *, upper: bool) -> str:
    """A bound for people: ``-inf``/``+inf`` for None, ISO dates, quoted strings."""
    if value is None:
        return "+inf" if upper else "-inf"
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str):
        return repr(value)
    return str(value)


def format_interval(lo: Any, hi: Any) -> str:
    return f"[{format_bound(lo, upper=False)}, {format_bound(hi, upper=True)})"


def _lo_order(interval: Sequence[Any]) -> tuple[bool, Any]:
    """Sort key putting an unbounded (None) lower end first."""
    return (interval[0] is not None, interval[0])


def _bound_kind(value: Any) -> str:
    """The family a bound belongs to; bounds of one group must share one."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, decimal.Decimal)):
        return "number"
    if isinstance(value, datetime.datetime):
        return "naive datetime" if value.utcoffset() is None else "aware datetime"
    if isinstance(value, datetime.date):
        return "date"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


# --- the layout ------------------------------------------------------------------------


class RangeLayout(Layout):
    """Sorted, non-overlapping intervals ``[lo, hi)`` and their owners.

    Gaps are allowed (a point in a gap has no shard). A shard may own several intervals.
    ``locate`` bisects the finite lower bounds, precomputed here.
    """

    __slots__ = ("_covered", "_his", "_owners", "_shift", "_starts", "intervals")

    def __init__(self, intervals: Iterable[Sequence[Any]]) -> None:
        try:
            ordered = sorted((tuple(iv) for iv in intervals), key=_lo_order)
            for lo, hi, _ in ordered:
                if lo is not None and hi is not None and not lo < hi:
                    raise ValueError(f"range {format_interval(lo, hi)} is empty")
            for (_, prev_hi, prev), (lo, _, name) in pairwise(ordered):
                if prev_hi is None or lo is None or lo < prev_hi:
                    raise ValueError(f"the ranges of shards {prev!r} and {name!r} overlap")
        except TypeError as exc:
            raise ValueError(f"range bounds are not of one orderable type ({exc})") from exc
        self.intervals: tuple[Interval, ...] = tuple(ordered)
        self._starts = [lo for lo, _, _ in ordered if lo is not None]
        self._his = [hi for _, hi, _ in ordered]
        self._owners = [name for _, _, name in ordered]
        # Interval 0 has no entry in _starts when it is unbounded below.
        self._shift = 1 if ordered and ordered[0][0] is None else 0
        self._covered: str | None = None

    def locate(self, point: Any) -> str:
        try:
            i = bisect_right(self._starts, point) - 1 + self._shift
            if i >= 0:
                hi = self._his[i]
                if hi is None or point < hi:
                    return self._owners[i]
        except TypeError:
            raise NoShardForKey(
                f"key {point!r} ({type(point).__name__}) cannot be compared with the range "
                f"bounds of this group, which covers {self.covered()}"
            ) from None
        raise NoShardForKey(
            f"key {point!r} is outside every shard's range; this group covers {self.covered()}"
        )

    def covered(self) -> str:
        """The covered key space, adjacent intervals merged: ``[0, 100), [200, +inf)``."""
        if self._covered is None:
            merged: list[list[Any]] = []
            for lo, hi, _ in self.intervals:
                if merged and merged[-1][1] is not None and merged[-1][1] == lo:
                    merged[-1][1] = hi
                else:
                    merged.append([lo, hi])
            self._covered = ", ".join(format_interval(lo, hi) for lo, hi in merged) or "nothing"
        return self._covered

    def to_json(self) -> dict[str, Any]:
        return {
            "ranges": [
                {"shard": name, "lo": encode_bound(lo), "hi": encode_bound(hi)}
                for lo, hi, name in self.intervals
            ]
        }

    @classmethod
    def from_json(cls, data: Any) -> RangeLayout:
        return cls(
            (decode_bound(item["lo"]), decode_bound(item["hi"]), str(item["shard"]))
            for item in data["ranges"]
        )

    def shard_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self._owners))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeLayout) and self.intervals == other.intervals

    def __hash__(self) -> int:
        return hash(self.intervals)

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={format_interval(lo, hi)}" for lo, hi, name in self.intervals)
        return f"RangeLayout({parts})"


# --- predicate bounds ------------------------------------------------------------------


def _next_value(value: Any) -> Any:
    """The smallest value above ``value`` for discrete types (int, date), else None."""
    if type(value) is int:
        return value + 1
    if type(value) is datetime.date and value < datetime.date.max:
        return value + datetime.timedelta(days=1)
    return None


def _error(group: GroupSettings, code: str, msg: str, hint: str) -> Error:
    """A check error on ``group``; the hint ends with a link to the range settings docs."""
    return Error(
        msg,
        hint=f"{hint} See {DOCS_URL}settings/#range",
        obj=f"DJANGO_SHARDS['GROUPS'][{group.name!r}]",
        id=f"django_shards.{code}",
    )


# --- the strategy ----------------------------------------------------------------------


class RangeStrategy(Strategy):
    """Point = the key; shards own ``[lo, hi)`` intervals from each shard's ``RANGE``."""

    name = "range"
    ordered = True
    splits_at_key = True

    def point(self, key: Any) -> Any:
        if key.__class__ in _PLAIN_KEY_TYPES:
            return key
        return canonical_key(key)

    def initial_layout(self, shards: Sequence[ShardSettings]) -> RangeLayout:
        intervals = []
        for spec in shards:
            rng = spec.range
            if not isinstance(rng, (list, tuple)) or len(rng) != 2:
                raise ImproperlyConfigured(
                    f"range shard {spec.name!r} needs RANGE = [lo, hi]; "
                    "run `manage.py check` for details."
                )
            intervals.append((rng[0], rng[1], spec.name))
        try:
            return RangeLayout(intervals)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"range shards are misconfigured ({exc}); run `manage.py check` for details."
            ) from exc

    def load_layout(self, data: Any) -> RangeLayout:
        return RangeLayout.from_json(data)

    def locate(self, layout: Layout, point: Any) -> str:
        return layout.locate(point)  # type: ignore[attr-defined]

    def shard_for_key(self, layout: Layout, key: Any) -> str:
        if key.__class__ not in _PLAIN_KEY_TYPES:
            key = canonical_key(key)
        return layout.locate(key)  # type: ignore[attr-defined]

    def shards_for_range(
        self,
        layout: Layout,
        lo: Any = None,
        hi: Any = None,
        lo_inclusive: bool = True,
        hi_inclusive: bool = False,
    ) -> list[str] | None:
        """Shards, in key order, whose intervals overlap the predicate interval.

        ``None`` bounds are unbounded. For ints and dates the bounds are made exact
        (``> 9`` is ``>= 10``); for other types a shard is kept whenever it may overlap.
        Returns ``None`` (no pruning) if the bounds cannot be compared with the map's.
        """
        assert isinstance(layout, RangeLayout)
        lo, hi = canonical_key(lo), canonical_key(hi)
        if lo is not None and not lo_inclusive and (nxt := _next_value(lo)) is not None:
            lo, lo_inclusive = nxt, True
        if hi is not None and hi_inclusive and (nxt := _next_value(hi)) is not None:
            hi, hi_inclusive = nxt, False
        try:
            if lo is not None and hi is not None:
                if lo > hi or (lo == hi and not (lo_inclusive and hi_inclusive)):
                    return []
            names: list[str] = []
            for start, end, name in layout.intervals:
                if lo is not None and end is not None and end <= lo:
                    continue  # the interval ends before the predicate starts
                if hi is not None and start is not None:
                    if start > hi or (start == hi and not hi_inclusive):
                        break  # this interval and every later one start after it ends
                if name not in names:
                    names.append(name)
            return names
        except TypeError:
            return None

    def ownership_q(self, layout: Layout, shard: str, field: str) -> Q:
        """``lo <= field < hi`` for each of ``shard``'s intervals (adjacent ones joined),
        ORed; an unbounded end gives no comparison. String bounds compare by code point,
        as Python orders them (not by the column's collation)."""
        assert isinstance(layout, RangeLayout)
        parts = merged((lo, hi) for lo, hi, name in layout.intervals if name == shard)
        if not parts:
            return nothing_q(field)
        q = Q()
        for lo, hi in parts:
            part = Q()
            for bound, lookup in ((lo, GreaterThanOrEqual), (hi, LessThan)):
                if bound is None:
                    continue
                key = CodePointOrder(F(field)) if isinstance(bound, str) else F(field)
                part &= Q(lookup(key, bound))
            if not part:  # unbounded both ways: every key
                return Q()
            q |= part
        return q

    def split(self, layout: Layout, source: str, target: str, at: Any = None) -> RangeLayout:
        """``target`` takes ``[at, hi)`` of ``source``'s interval; ``source`` keeps ``[lo, at)``.

        ``at`` is mandatory (the caller picks the median stored key when the user gives
        none) and must lie strictly inside one of ``source``'s intervals.
        """
        assert isinstance(layout, RangeLayout)
        names = layout.shard_names()
        if source not in names:
            raise SplitError(
                f"shard {source!r} owns no range in this group (shards: {', '.join(names)})."
            )
        if target in names:
            raise SplitError(f"shard {target!r} already owns a range in this group.")
        if at is None:
            raise SplitError(
                "a range split needs the key to split at (`at`); the new shard takes [at, hi)."
            )
        at = canonical_key(at)
        try:
            encode_bound(at)
        except TypeError as exc:
            raise SplitError(f"cannot split at {at!r}: {exc}.") from None
        owned = [(i, iv) for i, iv in enumerate(layout.intervals) if iv[2] == source]
        for i, (lo, hi, _) in owned:
            try:
                inside = (lo is None or lo < at) and (hi is None or at < hi)
            except TypeError:
                raise SplitError(
                    f"split key {at!r} ({type(at).__name__}) cannot be compared with the "
                    f"bounds of the range {format_interval(lo, hi)} of shard {source!r}."
                ) from None
            if inside:
                intervals = list(layout.intervals)
                intervals[i : i + 1] = [(lo, at, source), (at, hi, target)]
                return RangeLayout(intervals)
        ranges = ", ".join(format_interval(lo, hi) for _, (lo, hi, _) in owned)
        raise SplitError(
            f"split key {at!r} is not strictly inside the range {ranges} of shard {source!r}."
        )

    def default_split_point(self, layout: Layout, source: str, stored: StoredKeys) -> Any:
        """The median key actually stored on ``source``; ``SplitError`` when it has none."""
        at = stored.median()
        if at is None:
            raise SplitError(
                f"Shard {source!r} holds no rows, so there is no median key to split at; "
                "pass --at KEY."
            )
        return at

    def encode_split_point(self, at: Any) -> Any:
        """The split key as a tagged JSON bound (:func:`encode_bound`)."""
        return encode_bound(at)

    def decode_split_point(self, data: Any) -> Any:
        return decode_bound(data)

    def describe(self, layout: Layout) -> dict[str, str]:
        assert isinstance(layout, RangeLayout)
        out: dict[str, list[str]] = {}
        for lo, hi, name in layout.intervals:
            out.setdefault(name, []).append(format_interval(lo, hi))
        return {name: ", ".join(parts) for name, parts in out.items()}

    @classmethod
    def check(cls, group: GroupSettings) -> list[CheckMessage]:
        """E020 missing/malformed/empty RANGE, E021 overlap, E022 gap, E023 bound types."""
        errors: list[CheckMessage] = []
        bounds: list[Interval] = []
        for spec in group.shards:
            rng = spec.range
            if rng is None:
                msg = f"Range shard {spec.name!r} has no RANGE."
                hint = 'Give every shard "RANGE": [lo, hi] (None = unbounded).'
                errors.append(_error(group, "E020", msg, hint))
            elif not isinstance(rng, (list, tuple)) or len(rng) != 2:
                msg = f"RANGE of shard {spec.name!r} must be a [lo, hi] pair, got {rng!r}."
                hint = "Use two bounds, None for an unbounded end."
                errors.append(_error(group, "E020", msg, hint))
            else:
                bounds.append((rng[0], rng[1], spec.name))
        type_error = _bound_type_error(group, bounds)
        if type_error is not None:
            return [*errors, type_error]

        for lo, hi, name in bounds:
            if lo is not None and hi is not None and not lo < hi:
                msg = f"RANGE of shard {name!r} is empty: lo {lo!r} is not below hi {hi!r}."
                hint = "A RANGE [lo, hi] owns lo <= key < hi, so lo must be below hi."
                errors.append(_error(group, "E020", msg, hint))
        if errors or not bounds:
            return errors

        # Walk in order of lower bound, remembering the interval reaching furthest so far.
        ordered = sorted(bounds, key=_lo_order)
        reach_lo, reach, reach_name = ordered[0]
        for lo, hi, name in ordered[1:]:
            reaching = f"{reach_name!r} {format_interval(reach_lo, reach)}"
            if reach is None or lo is None or lo < reach:
                other = f"{name!r} {format_interval(lo, hi)}"
                msg = f"The ranges of shards {reaching} and {other} overlap."
                hint = "Every key must belong to exactly one shard."
                errors.append(_error(group, "E021", msg, hint))
            elif reach < lo:
                msg = (
                    f"No shard owns {format_interval(reach, lo)}: a gap between shard {reaching}"
                    f" and shard {name!r} {format_interval(lo, hi)}."
                )
                hint = "Make each RANGE start where the previous one ends."
                errors.append(_error(group, "E022", msg, hint))
            if reach is not None and (hi is None or hi > reach):
                reach_lo, reach, reach_name = lo, hi, name
        return errors


def _bound_type_error(group: GroupSettings, bounds: list[Interval]) -> CheckMessage | None:
    """E023 when the bounds mix types that cannot be compared or stored."""
    kinds: dict[str, tuple[str, Any]] = {}
    for lo, hi, name in bounds:
        for value in (lo, hi):
            if value is not None:
                kinds.setdefault(_bound_kind(value), (name, value))
    if len(kinds) > 1:
        examples = "; ".join(
            f"shard {name!r} has {kind} {value!r}" for kind, (name, value) in kinds.items()
        )
        msg = f"RANGE bounds mix types that cannot be compared: {examples}."
        hint = "Use one type for every bound of the group."
        return _error(group, "E023", msg, hint)
    if kinds:
        ((kind, (name, value)),) = kinds.items()
        try:
            encode_bound(value)
            sorted(v for lo, hi, _ in bounds for v in (lo, hi) if v is not None)
        except TypeError as exc:
            example = f"shard {name!r}: {value!r}"
            msg = f"RANGE bounds of type {kind} ({example}) cannot be used: {exc}."
            hint = "Use ints, strings, dates, datetimes, decimals or UUIDs."
            return _error(group, "E023", msg, hint)
    return None


register_drawer(RangeLayout, "django_shards.strategies.range_svg.draw_range")
