"""``modulo``: shard = ``int(md5(text).hexdigest(), 16) % N``, indexing ``SHARDS`` in order.

The naive scheme, kept for compatibility. The point is the full 128-bit MD5 of the key's
canonical text; the layout (the shard names in settings order) takes it modulo N. Going
from N to N + 1 shards moves N/(N+1) of all keys, so modulo cannot split one shard: it
can only grow by doubling every shard, which this strategy refuses to do for you.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core import checks
from django.core.checks import CheckMessage
from django.core.exceptions import ImproperlyConfigured

from django_shards.conf import DOCS_URL, GroupSettings, ShardSettings
from django_shards.exceptions import NoShardForKey, SplitError
from django_shards.strategies.base import Layout, Strategy, canonical_text, register_drawer

try:  # CPython's own MD5 is about twice as fast as OpenSSL's on short keys; same digest.
    from _md5 import md5
except ImportError:  # pragma: no cover - interpreters built without it
    from hashlib import md5

__all__ = ["ModuloLayout", "ModuloStrategy", "modulo_point"]

SPLIT_REFUSED = (
    "modulo cannot split one shard: it can only double every shard. "
    "Use range, hash or consistent_hash to split a single shard."
)


def modulo_point(key: Any) -> int:
    """``int(md5(text).hexdigest(), 16)`` of the key's canonical text (all 128 bits).

    The bytes are :func:`~django_shards.strategies.base.canonical_text`'s.
    """
    return int.from_bytes(md5(canonical_text(key)).digest(), "big")


class ModuloLayout(Layout):
    """The shard names, in settings order; point ``p`` belongs to ``names[p % N]``."""

    __slots__ = ("_count", "names")

    def __init__(self, names: Iterable[str]) -> None:
        self.names: tuple[str, ...] = tuple(str(name) for name in names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"shard names repeat: {self.names!r}")
        self._count = len(self.names)

    def locate(self, point: int) -> str:
        try:
            return self.names[point % self._count]
        except ZeroDivisionError:
            raise NoShardForKey("this modulo group has no shards") from None

    def to_json(self) -> dict[str, Any]:
        return {"shards": list(self.names)}

    @classmethod
    def from_json(cls, data: Any) -> ModuloLayout:
        return cls(data["shards"])

    def shard_names(self) -> tuple[str, ...]:
        return self.names

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModuloLayout) and self.names == other.names

    def __hash__(self) -> int:
        return hash(self.names)

    def __repr__(self) -> str:
        return f"ModuloLayout({', '.join(self.names)})"


class ModuloStrategy(Strategy):
    """Point = the 128-bit MD5 of the key's text; shard = ``SHARDS[point % N]``."""

    name = "modulo"
    ordered = False
    split_refusal = SPLIT_REFUSED

    # the module function itself: no extra frame per call
    point = staticmethod(modulo_point)

    def shard_for_key(self, layout: Layout, key: Any) -> str:
        # modulo_point and ModuloLayout.locate inlined: this runs on every routed query
        text = b"%d" % key if key.__class__ is int else canonical_text(key)
        try:
            return layout.names[int.from_bytes(md5(text).digest(), "big") % layout._count]  # type: ignore[attr-defined]
        except ZeroDivisionError:
            raise NoShardForKey("this modulo group has no shards") from None

    def initial_layout(self, shards: Sequence[ShardSettings]) -> ModuloLayout:
        try:
            return ModuloLayout(spec.name for spec in shards)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{exc}; run `manage.py check` for details.") from exc

    def load_layout(self, data: Any) -> ModuloLayout:
        return ModuloLayout.from_json(data)

    def locate(self, layout: Layout, point: Any) -> str:
        return layout.locate(point)  # type: ignore[attr-defined]

    def split(self, layout: Layout, source: str, target: str, at: Any = None) -> Layout:
        """Always raises ``SplitError``: modulo can only grow by doubling every shard."""
        raise SplitError(self.split_refusal)

    def share(self, layout: Layout) -> dict[str, float | None]:
        names = layout.shard_names()
        return {name: 1 / len(names) for name in names}

    def describe(self, layout: Layout) -> dict[str, str]:
        names = layout.shard_names()
        return {name: f"md5 % {len(names)} == {i}" for i, name in enumerate(names)}

    @classmethod
    def check(cls, group: GroupSettings) -> list[CheckMessage]:
        """W020: modulo can only grow by doubling every shard."""
        return [
            checks.Warning(
                f"Shard group {group.name!r} uses modulo placement: it cannot split one "
                "shard and can only grow by doubling every shard, moving half of all rows.",
                hint="Prefer consistent_hash (adding a shard moves ~1/(N+1) of keys). "
                f"See {DOCS_URL}settings/#modulo",
                obj=f"DJANGO_SHARDS['GROUPS'][{group.name!r}]",
                id="django_shards.W020",
            )
        ]


register_drawer(ModuloLayout, "django_shards.strategies.modulo_svg.draw_modulo")
