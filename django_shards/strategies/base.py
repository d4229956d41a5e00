"""The strategy interface every placement scheme implements."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from django.core.checks import CheckMessage
    from django.db.models import Q

    from django_shards.conf import GroupSettings, ShardSettings


def canonical_key(key: Any) -> Any:
    """A model instance stands for its primary key; anything else for itself."""
    meta = getattr(key, "_meta", None)
    if meta is not None and hasattr(key, "pk"):
        return key.pk
    return key


def canonical_text(key: Any) -> bytes:
    """The bytes every hashing strategy hashes: ``str(key)`` (an instance: its pk), UTF-8.

    Fast paths for plain ints and strings: this runs on every routed query.
    """
    cls = key.__class__
    if cls is int:
        return b"%d" % key
    if cls is str:
        return key.encode()
    return str(canonical_key(key)).encode("utf-8")


class StoredKeys(Protocol):
    """The shard keys stored on one shard, read from its primary only when asked.

    ``django_shards.resharding.plan`` gives one to :meth:`Strategy.default_split_point`.
    """

    def median(self) -> Any:
        """The median key stored on the shard (over the group's table with the most rows),
        or None when it holds no rows. Raises ``SplitError`` when the database fails."""


class Layout(abc.ABC):
    """An immutable assignment of points to shard names, serialisable to JSON."""

    @abc.abstractmethod
    def to_json(self) -> Any:
        """A JSON-serialisable form, read back by the strategy's ``load_layout``."""

    @abc.abstractmethod
    def shard_names(self) -> tuple[str, ...]:
        """Names of the shards that own some part of the point space, in layout order."""


class Strategy(abc.ABC):
    """Maps keys to points and, through a :class:`Layout`, points to shard names.

    Subclasses are built with the group's ``OPTIONS`` dict and must be cheap to call:
    ``point`` and ``locate`` run on every routed query.
    """

    #: short name used in settings ("range", "hash", ...); custom strategies may leave it.
    name: ClassVar[str] = "custom"
    #: True when points keep the keys' order, so range predicates can be pruned.
    ordered: ClassVar[bool] = False
    #: True when ``split`` takes the key to split at (``--at``); False when it picks the
    #: split itself and ``at`` must be None.
    splits_at_key: ClassVar[bool] = False
    #: None when ``split`` can split one shard; else the sentence saying why it never can
    #: (``SplitError``'s message, shown by ``shard_status`` instead of a split command).
    split_refusal: ClassVar[str | None] = None

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: dict[str, Any] = dict(options or {})

    @abc.abstractmethod
    def point(self, key: Any) -> Any:
        """The point of ``key`` (a model instance counts as its pk)."""

    @abc.abstractmethod
    def initial_layout(self, shards: Sequence[ShardSettings]) -> Layout:
        """Version 1 of the map, from the group's settings."""

    @abc.abstractmethod
    def load_layout(self, data: Any) -> Layout:
        """The layout stored by ``Layout.to_json`` in the catalog."""

    @abc.abstractmethod
    def locate(self, layout: Layout, point: Any) -> str:
        """The shard name owning ``point``. Raises ``NoShardForKey`` if none does."""

    def shard_for_key(self, layout: Layout, key: Any) -> str:
        return self.locate(layout, self.point(key))

    def shards_for_range(
        self,
        layout: Layout,
        lo: Any = None,
        hi: Any = None,
        lo_inclusive: bool = True,
        hi_inclusive: bool = False,
    ) -> list[str] | None:
        """Shards whose points may hold keys in the interval (None = unbounded).

        ``None`` means the strategy cannot prune ranges (every shard may hold them).
        """
        return None

    def ownership_q(self, layout: Layout, shard: str, field: str) -> Q | None:
        """A ``Q`` selecting exactly the rows whose key (the model field or attname
        ``field``, e.g. ``"id"`` or ``"author_id"``) this strategy places on ``shard`` in
        ``layout``; ``Q()`` when the shard owns every key, a Q matching nothing when it owns
        none. It compiles on MariaDB/MySQL and SQLite.

        A split selects the moving rows with it, and a fan-out filters the rows a shard
        still holds after a cutover but no longer owns. None (the default): this strategy
        cannot say in SQL, and fan-outs between a split's cutover and the end of its
        clean-up may then count the moved rows twice.
        """
        return None

    @abc.abstractmethod
    def split(self, layout: Layout, source: str, target: str, at: Any = None) -> Layout:
        """A new layout where ``target`` takes part of ``source``; other shards unchanged.

        Raises ``SplitError`` with a clear sentence when this strategy cannot do it.
        """

    @property
    def can_split_one_shard(self) -> bool:
        """False for a strategy that can only grow by changing every shard (modulo)."""
        return self.split_refusal is None

    def default_split_point(self, layout: Layout, source: str, stored: StoredKeys) -> Any:
        """The ``at`` a split of ``source`` uses when the user gives none.

        None (the default) for a strategy whose split picks its own point. A strategy with
        ``splits_at_key`` returns a key (range: ``stored.median()``) or raises ``SplitError``
        saying why there is none. Reads the database only through ``stored``.
        """
        return None

    def encode_split_point(self, at: Any) -> Any:
        """A JSON form of a split point (kept in the split job), read back by
        :meth:`decode_split_point`. The default keeps ``at`` as it is (None stays None)."""
        return at

    def decode_split_point(self, data: Any) -> Any:
        """The split point stored by :meth:`encode_split_point`."""
        return data

    def share(self, layout: Layout) -> dict[str, float | None]:
        """Fraction of the point space each shard owns (None where it has no meaning)."""
        return {name: None for name in layout.shard_names()}

    def describe(self, layout: Layout) -> dict[str, str]:
        """A short human description of what each shard owns (for shard_status)."""
        return {name: "" for name in layout.shard_names()}

    @classmethod
    def check(cls, group: GroupSettings) -> list[CheckMessage]:
        """System-check messages for this group's configuration (ids django_shards.E02x)."""
        return []


# --- drawers: how the status page draws a layout -----------------------------------------

_DRAWERS: dict[type[Layout], str] = {}


def register_drawer(layout_class: type[Layout], drawer: str) -> None:
    """Name, by dotted path, the function that draws ``layout_class`` on the status page.

    The function is ``drawer(layout, strategy, canvas) -> django_shards.svg.Drawing`` (see
    :mod:`django_shards.svg`); it is imported the first time such a layout is drawn, so
    routing never loads drawing code. Subclasses of ``layout_class`` share its drawer
    unless they register their own. A layout without one is drawn as slices proportional
    to :meth:`Strategy.share`.
    """
    _DRAWERS[layout_class] = drawer


def drawer_path(layout: Layout) -> str | None:
    """The dotted path registered for ``layout``'s class (or its nearest base), if any."""
    for cls in type(layout).__mro__:
        if cls in _DRAWERS:
            return _DRAWERS[cls]
    return None


def load_strategy(path: str, options: Mapping[str, Any] | None = None) -> Strategy:
    """Instantiate the strategy class named by dotted ``path``.

    Raises ``ImproperlyConfigured`` when the path does not import or does not name a
    :class:`Strategy` subclass (check ``E003`` reports the same before the first query).
    """
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"STRATEGY {path!r} cannot be imported ({exc}); run `manage.py check` (E003)."
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ImproperlyConfigured(
            f"STRATEGY {path!r} is not a django_shards.strategies.base.Strategy subclass; "
            "run `manage.py check` (E003)."
        )
    return cls(options)
