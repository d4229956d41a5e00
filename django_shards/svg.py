"""Shared SVG plumbing for the status page's pictures of shard maps.

- a tiny element builder that escapes every text and attribute (:func:`el`, :func:`text`,
  :func:`title`), so a picture is safe to put in a template as is, and well-formed XML;
- the geometry and colours every picture shares;
- :class:`Drawing`, what a *layout drawer* returns: the elements each shard owns in the key
  space, the elements between shards, and where the per-shard panel goes;
- helpers for the common "key space as a horizontal bar" pictures (:func:`slot`,
  :func:`slot_label`, :func:`boundary_labels`, :func:`unbounded_end`);
- :func:`draw_layout`, which finds the drawer a strategy registered for its layout
  (:func:`django_shards.strategies.base.register_drawer`) and falls back to
  :func:`draw_shares`, slices proportional to ``Strategy.share``.

How each strategy draws its layout lives with the strategy, in ``strategies/``; the whole
picture (key space, per-shard panel, legend) is put together by
:mod:`django_shards.status_svg`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from django.utils.html import escape
from django.utils.module_loading import import_string

from django_shards.strategies.base import drawer_path

if TYPE_CHECKING:
    from django_shards.strategies.base import Layout, Strategy

__all__ = [
    "BAR_H",
    "BAR_PANEL_Y",
    "BAR_X0",
    "BAR_X1",
    "BAR_Y",
    "GAP_COLOUR",
    "INK",
    "MUTED",
    "WIDTH",
    "Canvas",
    "Drawing",
    "LayoutDrawer",
    "boundary_labels",
    "count",
    "dom_id",
    "draw_layout",
    "draw_shares",
    "el",
    "fit",
    "num",
    "percent",
    "slice_weights",
    "slices",
    "slot",
    "slot_label",
    "text",
    "text_width",
    "title",
    "unbounded_end",
]

INK = "#222"
MUTED = "#666"
GAP_COLOUR = "#e4e4e4"

WIDTH = 960
FONT = "system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', Arial, sans-serif"
CHAR_WIDTH = 0.6  # average glyph width in ems, to keep labels from overlapping

# the key-space bar (range, hash, modulo, and any layout without a drawer of its own)
BAR_X0, BAR_X1 = 44.0, WIDTH - 44.0
BAR_Y, BAR_H = 58.0, 36.0
BAR_PANEL_Y = 150.0


# --- a tiny, escaping element builder ------------------------------------------------------


def num(value: Any) -> str:
    """A number as an attribute value: floats with at most two decimals, no trailing zeros."""
    if isinstance(value, float):
        digits = f"{value:.2f}".rstrip("0").rstrip(".")
        return "0" if digits in ("", "-0") else digits
    return str(value)


def el(name: str, attrs: Mapping[str, Any] | None = None, *children: str) -> str:
    """``<name attrs>children</name>``; attribute values are escaped, children are not
    (they are elements built here, or text passed through :func:`text`)."""
    parts = [name]
    for key, value in (attrs or {}).items():
        if value is None or value is False:
            continue
        parts.append(f'{key}="{escape(num(value))}"')
    head = " ".join(parts)
    if not children:
        return f"<{head}/>"
    return f"<{head}>{''.join(children)}</{name}>"


def text(x: float, y: float, content: str, **attrs: Any) -> str:
    """A ``<text>`` at ``(x, y)``; ``font_size=11`` is written ``font-size="11"``."""
    attrs = {k.replace("_", "-"): v for k, v in attrs.items()}
    return el("text", {"x": x, "y": y, **attrs}, str(escape(content)))


def title(content: str) -> str:
    """A ``<title>``: the tooltip of the element it is in."""
    return f"<title>{escape(content)}</title>"


def text_width(content: str, size: float = 12) -> float:
    return len(content) * size * CHAR_WIDTH


def fit(content: str, width: float, size: float = 12) -> str:
    """``content``, cut with an ellipsis to fit ``width`` pixels ("" when nothing fits)."""
    if text_width(content, size) <= width:
        return content
    chars = int(width / (size * CHAR_WIDTH)) - 1
    return content[:chars] + "…" if chars >= 2 else ""


def dom_id(group: str, what: str) -> str:
    """An id unique per group and valid in HTML and XML: ``shards-users-3f2a9c-hatch``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", group).strip("-")[:30] or "group"
    digest = hashlib.md5(group.encode(), usedforsecurity=False).hexdigest()[:6]
    return f"shards-{slug}-{digest}-{what}"


def count(n: int) -> str:
    return f"{n:,}"


def percent(share: float) -> str:
    """``25%``, or ``12.5%`` when a whole number would be off."""
    pct = 100 * share
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}%"


# --- what a layout drawer gets and returns -------------------------------------------------


@dataclass(frozen=True)
class Canvas:
    """What a drawer may use: each shard's colour (every shard of the map, split targets
    included) and the ids of the picture's hatch patterns."""

    colours: Mapping[str, str]
    hatch: str  # pattern id: white hatching, over a shard's colour (an unbounded end)
    gap: str  # pattern id: grey hatching, for points no shard owns


@dataclass
class Drawing:
    """The key space of one layout, as a drawer draws it.

    ``owned[name]`` holds the elements of the key space that shard ``name`` owns (they go
    into its ``<g class="shard">``), ``common`` those between shards (axis, bounds, gaps),
    ``owns_title[name]`` the tooltip of what the shard owns (default: its ``describe``).
    The other fields say where the per-shard panel goes: below a bar by default, beside a
    picture that needs the left of the canvas (the ring) with ``panel_x``/``panel_y`` and
    ``bottom``, the lowest point the key space reaches.
    """

    owned: dict[str, list[str]]
    common: list[str] = field(default_factory=list)
    owns_title: dict[str, str] = field(default_factory=dict)
    caption: str | None = None  # one line above the key space
    panel_x: float = 0.0
    panel_y: float = BAR_PANEL_Y
    bottom: float = 0.0
    show_share: bool = True  # the panel's share column (off where a share means nothing)

    @classmethod
    def of(cls, canvas: Canvas, **fields: Any) -> Drawing:
        """An empty drawing with a place for every shard of ``canvas``."""
        return cls({name: [] for name in canvas.colours}, **fields)


#: ``drawer(layout, strategy, canvas) -> Drawing``, registered by dotted path with
#: :func:`django_shards.strategies.base.register_drawer`.
LayoutDrawer = Callable[[Any, "Strategy", Canvas], Drawing]


def draw_layout(layout: Layout, strategy: Strategy, canvas: Canvas) -> Drawing:
    """The key space of ``layout``, drawn by the drawer registered for its class, or as
    slices proportional to ``strategy.share`` when none is."""
    path = drawer_path(layout)
    drawer = draw_shares if path is None else cast(LayoutDrawer, import_string(path))
    return drawer(layout, strategy, canvas)


# --- the key space as a horizontal bar -----------------------------------------------------


def slot_label(d: Drawing, name: str, x0: float, x1: float, label: str) -> None:
    """The shard's name (and share) centred above its slot, if it fits."""
    for content in (label, name):
        fitted = fit(content, x1 - x0 - 4)
        if fitted == content or (content == name and fitted):
            d.owned[name].append(
                text(
                    (x0 + x1) / 2,
                    BAR_Y - 8,
                    fitted,
                    text_anchor="middle",
                    font_weight="600",
                    **{"class": "slot-label"},
                )
            )
            return


def boundary_labels(d: Drawing, marks: Sequence[tuple[float, str, str]]) -> None:
    """Ticks under the bar at ``(x, label, tooltip)``; a label that would overlap the
    previous one is left out (its tick and tooltip stay)."""
    last_right = -math.inf
    for i, (x, label, tip) in enumerate(marks):
        y = BAR_Y + BAR_H
        tick = el(
            "line",
            {"x1": x, "y1": y, "x2": x, "y2": y + 6, "stroke": MUTED, "stroke-width": 1},
        )
        width = text_width(label, 11)
        anchor = "start" if i == 0 and x - width / 2 < 2 else "middle"
        if i == len(marks) - 1 and x + width / 2 > WIDTH - 2:
            anchor = "end"
        left = x if anchor == "start" else x - width if anchor == "end" else x - width / 2
        written = ""
        if left >= last_right + 6:
            written = text(
                x, y + 20, label, text_anchor=anchor, font_size=11, fill=MUTED, **{"class": "bound"}
            )
            last_right = left + width
        d.common.append(el("g", {"class": "boundary"}, title(tip), tick, written))


def slot(d: Drawing, name: str | None, x0: float, x1: float, colour: str, tip: str) -> None:
    """A slot of the bar from ``x0`` to ``x1``: owned by ``name``, or a gap (None)."""
    rect = el(
        "rect",
        {
            "class": "slot" if name else "gap",
            "x": x0,
            "y": BAR_Y,
            "width": max(x1 - x0, 1.0),
            "height": BAR_H,
            "fill": colour,
            "stroke": "#fff",
            "stroke-width": 1,
        },
        title(tip),
    )
    (d.owned[name] if name else d.common).append(rect)


def unbounded_end(d: Drawing, name: str, colour: str, hatch: str, *, upper: bool) -> None:
    """A hatched end and an arrow past it: the interval goes on forever that way."""
    mid = BAR_Y + BAR_H / 2
    if upper:
        x, tip, face = BAR_X1 - 30, BAR_X1 + 20, BAR_X1
    else:
        x, tip, face = BAR_X0, BAR_X0 - 20, BAR_X0
    d.owned[name].append(
        el(
            "rect",
            {
                "class": "unbounded",
                "x": x,
                "y": BAR_Y,
                "width": 30,
                "height": BAR_H,
                "fill": f"url(#{hatch})",
            },
        )
    )
    corners = [(face, BAR_Y - 6), (tip, mid), (face, BAR_Y + BAR_H + 6)]
    points = " ".join(f"{num(x)},{num(y)}" for x, y in corners)
    d.owned[name].append(
        el(
            "polygon",
            {"class": "arrow", "points": points, "fill": colour},
            title(f"{name}: unbounded {'above' if upper else 'below'}"),
        )
    )


def slice_weights(names: Sequence[str], shares: Mapping[str, float | None]) -> list[float]:
    """Each shard's fraction of the bar: its share when every share is known, else equal."""
    known = [shares.get(n) for n in names]
    total = sum(s for s in known if s) if all(s is not None for s in known) else 0
    return [(s or 0) / total for s in known] if total else [1 / len(names)] * len(names)


def slices(names: Sequence[str], weights: Iterable[float]) -> list[tuple[str, float, float]]:
    """``(name, x0, x1)`` of consecutive slices of the bar, one per shard, by weight."""
    out = []
    x = BAR_X0
    for name, weight in zip(names, weights, strict=True):
        x1 = x + (BAR_X1 - BAR_X0) * weight
        out.append((name, x, x1))
        x = x1
    return out


def draw_shares(layout: Layout, strategy: Strategy, canvas: Canvas) -> Drawing:
    """The default drawer: one slice per shard, proportional to ``strategy.share`` when
    every share is known, else equal."""
    d = Drawing.of(canvas, caption=f"{strategy.name}: each shard's share of the points")
    names = layout.shard_names()
    if not names:
        return d
    weights = slice_weights(names, strategy.share(layout))
    for (name, x0, x1), weight in zip(slices(names, weights), weights, strict=True):
        slot(d, name, x0, x1, canvas.colours[name], f"{name}: {percent(weight)} of the keys")
        slot_label(d, name, x0, x1, f"{name} · {percent(weight)}")
    return d
