"""``consistent_hash``: a SHA-1 ring with ``vnodes`` tokens per shard (default 256).

The shard named ``s`` starts with the tokens ``int(sha1(f"{s}:{i}").hexdigest(), 16)`` for
``i in range(vnodes)``. A key's point is ``int(sha1(text).hexdigest(), 16)`` of its canonical
text; it belongs to the owner of the first token *strictly greater* than the point, wrapping
to the first token. Adding a shard moves about 1/(N+1) of the keys.

The layout stores every ``(token, shard)`` explicitly, so a split is just a new owner for
some tokens: the new shard takes every other token of the source (in ring order), about
half the source's keys, and no other shard's keys move. Two shards never share a token in
practice (160-bit hashes); if they did, the lower shard name would own it.

Placement reads a per-layout table of the owner of each 16-bit prefix of the ring (512 KB
per layout), which answers a point whose prefix one shard owns entirely (about 94% of them
with 16 shards x 256 tokens) from its digest's first two bytes; the other points bisect
the full 160-bit tokens. The answer is the same either way.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.db.models.functions import SHA1

from django_shards.conf import DOCS_URL, GroupSettings, ShardSettings
from django_shards.exceptions import NoShardForKey, SplitError
from django_shards.strategies.base import Layout, Strategy, canonical_text, register_drawer
from django_shards.strategies.ownership import hex_intervals_q, key_text

try:  # CPython's own SHA-1 beats OpenSSL's on short keys (no context copy); same digest.
    from _sha1 import sha1
except ImportError:  # pragma: no cover - interpreters built without it
    from hashlib import sha1

__all__ = ["RING", "ConsistentHashStrategy", "RingLayout", "ring_point", "shard_tokens"]

#: Size of the ring: tokens and points are ``0 <= x < RING``.
RING = 2**160
DEFAULT_VNODES = 256
MAX_VNODES = 10_000


def ring_point(key: Any) -> int:
    """``int(sha1(text).hexdigest(), 16)`` of the key's canonical text: ``0 <= point < 2**160``.

    The bytes are :func:`~django_shards.strategies.base.canonical_text`'s. Read as
    ``int.from_bytes(digest(), "big")``: the same number, without 40 hex digits to parse.
    """
    return int.from_bytes(sha1(canonical_text(key)).digest(), "big")


def shard_tokens(name: str, vnodes: int) -> list[int]:
    """The initial tokens of shard ``name``: ``int(sha1(f"{name}:{i}"), 16)``, i < vnodes."""
    return [int.from_bytes(sha1(f"{name}:{i}".encode()).digest(), "big") for i in range(vnodes)]


#: The owner table of a layout is indexed by a point's top 16 bits: a digest's first 2 bytes.
PREFIX_BITS = 16
_PREFIX_SHIFT = 160 - PREFIX_BITS


def _owners_by_prefix(tokens: Sequence[int], owners: Sequence[str]) -> list[str | None]:
    """For each ``PREFIX_BITS``-bit prefix ``b``, the owner of every point ``p`` with
    ``p >> _PREFIX_SHIFT == b`` when they all have the same owner, else None.

    ``tokens`` sorted, ``owners[i]`` the owner of the points just below ``tokens[i]``
    (``owners[len(tokens)]``: the wrap). The points of a prefix that holds tokens
    ``i..j-1`` go to ``owners[i..j]`` (the first token strictly above them); a prefix with
    no token has one owner, that of the next token. About 1 - e**(-tokens / 65536) of the
    prefixes hold a token (6% with 16 x 256); they are None unless one shard owns them all.
    """
    size = 2**PREFIX_BITS
    if not tokens:
        return [None] * size
    table: list[str | None] = []
    count = len(tokens)
    i = 0
    while i < count:
        prefix = tokens[i] >> _PREFIX_SHIFT
        j = i + 1
        while j < count and tokens[j] >> _PREFIX_SHIFT == prefix:
            j += 1
        table += [owners[i]] * (prefix - len(table))  # the prefixes with no token
        spanned = owners[i : j + 1]
        table.append(spanned[0] if spanned.count(spanned[0]) == len(spanned) else None)
        i = j
    table += [owners[count]] * (size - len(table))
    return table


class RingLayout(Layout):
    """Tokens on the ring and their owners; a point goes to the next token above it."""

    __slots__ = ("_by_prefix", "_first", "_owners", "_shift", "_tokens", "tokens")

    def __init__(self, tokens: Mapping[str, Iterable[int]]) -> None:
        #: shard name -> its tokens, sorted; shards in the order given (settings order).
        self.tokens: dict[str, tuple[int, ...]] = {}
        for name, owned in tokens.items():
            sorted_tokens = tuple(sorted(int(t) for t in owned))
            if sorted_tokens and not (0 <= sorted_tokens[0] and sorted_tokens[-1] < RING):
                raise ValueError(f"a token of shard {name!r} is outside the SHA-1 ring")
            if sorted_tokens:
                self.tokens[str(name)] = sorted_tokens
        ring = sorted((t, name) for name, owned in self.tokens.items() for t in owned)
        self._tokens = [t for t, _ in ring]
        # One extra owner at the end: a point above the last token wraps to the first.
        self._owners = [name for _, name in ring] + [ring[0][1]] if ring else []
        # Buckets by the point's top bits, about one token each (at most 2**16 buckets):
        # tokens[_first[b]:_first[b + 1]] are those in bucket b, so locate bisects a slice
        # of a token or two instead of the whole ring (40% faster with 16 x 256 tokens).
        bits = min(16, max(1, len(ring).bit_length()))
        self._shift = 160 - bits
        self._first = [bisect_left(self._tokens, b << self._shift) for b in range(2**bits + 1)]
        self._by_prefix = _owners_by_prefix(self._tokens, self._owners)

    def locate(self, point: int) -> str:
        if point >= 0:  # a negative point has no prefix: the bisect below answers it
            try:
                owner = self._by_prefix[point >> _PREFIX_SHIFT]
            except IndexError:
                owner = None  # above the ring: the bisect below raises
            if owner is not None:
                return owner
        bucket = point >> self._shift
        first = self._first
        try:
            return self._owners[bisect_right(self._tokens, point, first[bucket], first[bucket + 1])]
        except IndexError:
            if not self._tokens:
                raise NoShardForKey("the hash ring has no tokens") from None
            raise NoShardForKey(f"point {point!r} is outside the SHA-1 ring") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": {name: [f"{t:040x}" for t in owned] for name, owned in self.tokens.items()}
        }

    @classmethod
    def from_json(cls, data: Any) -> RingLayout:
        return cls({name: [int(t, 16) for t in owned] for name, owned in data["tokens"].items()})

    def shard_names(self) -> tuple[str, ...]:
        return tuple(self.tokens)

    def owned_arcs(self, name: str) -> list[tuple[int, int]]:
        """The points shard ``name`` owns, as sorted intervals ``[lo, hi)`` of
        ``[0, 2**160)``: token t owns ``[previous token, t)`` (a point belongs to the first
        token strictly above it), the first token also ``[last token, 2**160)``."""
        ring, owners = self._tokens, self._owners
        if not ring:
            return []
        arcs = [(0, ring[0])] if owners[0] == name else []
        arcs += [(ring[i - 1], ring[i]) for i in range(1, len(ring)) if owners[i] == name]
        if owners[0] == name:
            arcs.append((ring[-1], RING))
        return [(lo, hi) for lo, hi in arcs if lo < hi]

    def arcs(self) -> dict[str, int]:
        """Length of ring each shard owns: for each token, the arc from the previous token."""
        owned = dict.fromkeys(self.tokens, 0)
        ring, owners = self._tokens, self._owners
        for i, token in enumerate(ring):
            previous = ring[i - 1] if i else ring[-1] - RING
            owned[owners[i]] += token - previous
        return owned

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RingLayout) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(tuple(self.tokens.items()))

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={len(owned)} tokens" for name, owned in self.tokens.items())
        return f"RingLayout({parts})"


def _vnodes_problem(vnodes: Any) -> str | None:
    if isinstance(vnodes, bool) or not isinstance(vnodes, int):
        return f"must be an int, got {vnodes!r}"
    if not 1 <= vnodes <= MAX_VNODES:
        return f"must be between 1 and {MAX_VNODES}, got {vnodes}"
    return None


class ConsistentHashStrategy(Strategy):
    """SHA-1 ring; option ``vnodes`` (default 256) tokens per shard in the first layout."""

    name = "consistent_hash"
    ordered = False

    @property
    def vnodes(self) -> Any:
        return self.options.get("vnodes", DEFAULT_VNODES)

    # the module function itself: no extra frame per call
    point = staticmethod(ring_point)

    def shard_for_key(self, layout: Layout, key: Any) -> str:
        # ring_point and RingLayout.locate inlined: this runs on every routed query
        ring: RingLayout = layout  # type: ignore[assignment]
        text = b"%d" % key if key.__class__ is int else canonical_text(key)
        digest = sha1(text).digest()
        # the owner of the point's top 16 bits (digest[0] << 8 | digest[1]), when one
        # shard owns all the points under that prefix (about 94% of them with 16 x 256
        # tokens): no 160-bit int, no bisect
        owner = ring._by_prefix[digest[0] << 8 | digest[1]]
        if owner is not None:
            return owner
        point = int.from_bytes(digest, "big")
        bucket = point >> ring._shift
        first = ring._first
        try:
            return ring._owners[bisect_right(ring._tokens, point, first[bucket], first[bucket + 1])]
        except IndexError:
            return ring.locate(point)  # raises NoShardForKey

    def initial_layout(self, shards: Sequence[ShardSettings]) -> RingLayout:
        problem = _vnodes_problem(self.vnodes)
        if problem:
            raise ImproperlyConfigured(
                f"consistent_hash OPTIONS['vnodes'] {problem}; run `manage.py check`."
            )
        return RingLayout({spec.name: shard_tokens(spec.name, self.vnodes) for spec in shards})

    def load_layout(self, data: Any) -> RingLayout:
        return RingLayout.from_json(data)

    def locate(self, layout: Layout, point: Any) -> str:
        return layout.locate(point)  # type: ignore[attr-defined]

    def ownership_q(self, layout: Layout, shard: str, field: str) -> Q:
        """``SHA1(CAST(field AS CHAR))`` (the point as 40 lowercase hex digits) within one
        of ``shard``'s arcs, adjacent arcs joined, bounds written as 40-digit hex."""
        assert isinstance(layout, RingLayout)
        point = SHA1(key_text(field))
        return hex_intervals_q(point, layout.owned_arcs(shard), width=40, space=RING, field=field)

    def split(self, layout: Layout, source: str, target: str, at: Any = None) -> RingLayout:
        """``target`` takes every other token of ``source`` (odd positions in ring order).

        Only the source's keys move (about half of them), all to ``target``.
        """
        assert isinstance(layout, RingLayout)
        names = layout.shard_names()
        if source not in names:
            raise SplitError(
                f"shard {source!r} owns no tokens in this group (shards: {', '.join(names)})."
            )
        if target in names:
            raise SplitError(f"shard {target!r} already owns tokens in this group.")
        if at is not None:
            raise SplitError(
                "a consistent_hash split hands half of the source's tokens to the new shard; "
                "a split key (--at) only applies to range groups."
            )
        owned = layout.tokens[source]
        if len(owned) < 2:
            raise SplitError(f"shard {source!r} owns a single token and cannot be split.")
        tokens = dict(layout.tokens)
        tokens[source] = owned[0::2]
        tokens[target] = owned[1::2]
        return RingLayout(tokens)

    def share(self, layout: Layout) -> dict[str, float | None]:
        assert isinstance(layout, RingLayout)
        return {name: arc / RING for name, arc in layout.arcs().items()}

    def describe(self, layout: Layout) -> dict[str, str]:
        assert isinstance(layout, RingLayout)
        shares = self.share(layout)
        return {
            name: f"{len(owned)} tokens, {100 * (shares[name] or 0):.1f}% of ring"
            for name, owned in layout.tokens.items()
        }

    @classmethod
    def check(cls, group: GroupSettings) -> list[CheckMessage]:
        """E025: ``vnodes`` is not an int between 1 and 10000."""
        problem = _vnodes_problem(group.options.get("vnodes", DEFAULT_VNODES))
        if problem is None:
            return []
        return [
            Error(
                f"consistent_hash OPTIONS['vnodes'] {problem}.",
                hint=f"Use a positive int up to {MAX_VNODES}; 256 is the default. "
                f"See {DOCS_URL}settings/#consistent_hash",
                obj=f"DJANGO_SHARDS['GROUPS'][{group.name!r}]",
                id="django_shards.E025",
            )
        ]


register_drawer(RingLayout, "django_shards.strategies.consistent_hash_svg.draw_ring")
