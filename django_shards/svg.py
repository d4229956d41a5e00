"""Server-side SVG pictures of a group's shard map, for the status page.

One ``<svg class="shard-map" data-group="NAME">`` per group, no script, no external asset:

- the key space: ``range`` and ``hash`` groups as a horizontal bar split into each shard's
  intervals (``range``: one equal slot per interval, bounds written under the boundaries,
  an unbounded end drawn as a hatched end with an arrow; ``hash``: widths proportional to
  the share of ``[0, 2**64)``, boundaries as fractions of 2^64), ``modulo`` as equal slices,
  ``consistent_hash`` as a ring whose arcs are coloured by owner (each token owns the arc
  from the previous token);
- per shard: a colour swatch and name, one health dot per alias (square: primary, round:
  replica; green ok, amber lagging, red down) and a bar of its rows, a hot shard outlined
  in red.

Everything a shard contributes sits in one ``<g class="shard" data-shard="NAME">`` with
``<title>`` tooltips, so tests and stylesheets can find it. Every text and attribute is
escaped here: the result is safe to put in a template as is, and well-formed XML.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from django_shards.health import AliasHealth
from django_shards.shardmap import ShardMap
from django_shards.status import HOT_FACTOR, GroupStatus, ShardStatus
from django_shards.strategies.base import Layout
from django_shards.strategies.consistent_hash import RING, RingLayout
from django_shards.strategies.hash import SPACE, HashLayout
from django_shards.strategies.modulo import ModuloLayout
from django_shards.strategies.range import RangeLayout, format_bound, format_interval

__all__ = [
    "HEALTH_COLOURS",
    "PALETTE",
    "health_state",
    "shard_colour",
    "shard_map_svg",
    "worst_state",
]

#: Shard colours by the shard's index in its group's map (settings order, split targets
#: last). No pure red, green or amber: those mean health.
PALETTE = (
    "#4e79a7",  # blue
    "#b07aa1",  # mauve
    "#76b7b2",  # teal
    "#9c755f",  # brown
    "#ff9da7",  # pink
    "#2f4b7c",  # navy
    "#bab0ac",  # grey
    "#a0cbe8",  # light blue
    "#d37295",  # rose
    "#499894",  # dark teal
)

#: Health of an alias: ok, lagging (reachable but behind, lag unknown, or a read-only
#: primary) and down (unreachable, or replication stopped).
HEALTH_COLOURS = {"ok": "#2e9e44", "lagging": "#f0a500", "down": "#d62728"}
_SEVERITY = {"ok": 0, "lagging": 1, "down": 2}

HOT_COLOUR = HEALTH_COLOURS["down"]
INK = "#222"
MUTED = "#666"
GAP_COLOUR = "#e4e4e4"

WIDTH = 960
FONT = "system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', Arial, sans-serif"
CHAR_WIDTH = 0.6  # average glyph width in ems, to keep labels from overlapping

# the key-space bar (range, hash, modulo)
BAR_X0, BAR_X1 = 44.0, WIDTH - 44.0
BAR_Y, BAR_H = 58.0, 36.0
BAR_PANEL_Y = 150.0
# the ring (consistent_hash)
RING_CX, RING_CY, RING_R, RING_STROKE = 165.0, 185.0, 120.0, 36.0
RING_PANEL_X = 340.0
# the per-shard panel
ROW_H = 30.0


def health_state(health: AliasHealth) -> str:
    """``"ok"``, ``"lagging"`` or ``"down"``: the colour an alias is drawn in."""
    if health.healthy:
        return "ok"
    if not health.reachable or health.sql_running is False or health.io_running is False:
        return "down"
    return "lagging"  # behind the limit, lag unknown, or a read-only primary


def worst_state(states: Iterable[str]) -> str:
    """The most severe of ``states`` (``"ok"`` when there are none)."""
    return max(states, key=_SEVERITY.__getitem__, default="ok")


def shard_colour(index: int) -> str:
    """The fixed colour of the shard at ``index`` in its group's map."""
    return PALETTE[index % len(PALETTE)]


# --- a tiny, escaping element builder ------------------------------------------------------


def _num(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.2f}".rstrip("0").rstrip(".")
        return "0" if text in ("", "-0") else text
    return str(value)


def _el(name: str, attrs: Mapping[str, Any] | None = None, *children: str) -> str:
    """``<name attrs>children</name>``; attribute values are escaped, children are not
    (they are elements built here, or text passed through :func:`_text`)."""
    parts = [name]
    for key, value in (attrs or {}).items():
        if value is None or value is False:
            continue
        parts.append(f'{key}="{escape(_num(value))}"')
    head = " ".join(parts)
    if not children:
        return f"<{head}/>"
    return f"<{head}>{''.join(children)}</{name}>"


def _text(x: float, y: float, content: str, **attrs: Any) -> str:
    attrs = {k.replace("_", "-"): v for k, v in attrs.items()}
    return _el("text", {"x": x, "y": y, **attrs}, str(escape(content)))


def _title(content: str) -> str:
    return f"<title>{escape(content)}</title>"


def _text_width(text: str, size: float = 12) -> float:
    return len(text) * size * CHAR_WIDTH


def _fit(text: str, width: float, size: float = 12) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels ("" when nothing fits)."""
    if _text_width(text, size) <= width:
        return text
    chars = int(width / (size * CHAR_WIDTH)) - 1
    return text[:chars] + "…" if chars >= 2 else ""


def _dom_id(group: str, what: str) -> str:
    """An id unique per group and valid in HTML and XML: ``shards-users-3f2a9c-hatch``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", group).strip("-")[:30] or "group"
    digest = hashlib.md5(group.encode(), usedforsecurity=False).hexdigest()[:6]
    return f"shards-{slug}-{digest}-{what}"


def _count(n: int) -> str:
    return f"{n:,}"


# --- what each shard and the shared background contribute ---------------------------------


@dataclass
class _Drawing:
    owned: dict[str, list[str]]  # shard name -> elements of its part of the key space
    common: list[str]  # axis, bounds, gaps: between shards
    owns_title: dict[str, str]  # shard name -> tooltip of its part of the key space


def _new_drawing(names: Iterable[str]) -> _Drawing:
    return _Drawing({n: [] for n in names}, [], {})


def _slot_label(d: _Drawing, name: str, x0: float, x1: float, label: str) -> None:
    """The shard's name (and share) centred above its slot, if it fits."""
    for text in (label, name):
        fitted = _fit(text, x1 - x0 - 4)
        if fitted == text or (text == name and fitted):
            d.owned[name].append(
                _text(
                    (x0 + x1) / 2,
                    BAR_Y - 8,
                    fitted,
                    text_anchor="middle",
                    font_weight="600",
                    **{"class": "slot-label"},
                )
            )
            return


def _boundary_labels(d: _Drawing, marks: Sequence[tuple[float, str, str]]) -> None:
    """Ticks under the bar at ``(x, label, tooltip)``; a label that would overlap the
    previous one is left out (its tick and tooltip stay)."""
    last_right = -math.inf
    for i, (x, label, tip) in enumerate(marks):
        y = BAR_Y + BAR_H
        tick = _el(
            "line",
            {"x1": x, "y1": y, "x2": x, "y2": y + 6, "stroke": MUTED, "stroke-width": 1},
        )
        width = _text_width(label, 11)
        anchor = "start" if i == 0 and x - width / 2 < 2 else "middle"
        if i == len(marks) - 1 and x + width / 2 > WIDTH - 2:
            anchor = "end"
        left = x if anchor == "start" else x - width if anchor == "end" else x - width / 2
        text = ""
        if left >= last_right + 6:
            text = _text(
                x, y + 20, label, text_anchor=anchor, font_size=11, fill=MUTED, **{"class": "bound"}
            )
            last_right = left + width
        d.common.append(_el("g", {"class": "boundary"}, _title(tip), tick, text))


def _slot(d: _Drawing, name: str | None, x0: float, x1: float, colour: str, tip: str) -> None:
    rect = _el(
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
        _title(tip),
    )
    (d.owned[name] if name else d.common).append(rect)


def _unbounded_end(d: _Drawing, name: str, colour: str, hatch: str, *, upper: bool) -> None:
    """A hatched end and an arrow past it: the interval goes on forever that way."""
    mid = BAR_Y + BAR_H / 2
    if upper:
        x, tip, face = BAR_X1 - 30, BAR_X1 + 20, BAR_X1
    else:
        x, tip, face = BAR_X0, BAR_X0 - 20, BAR_X0
    d.owned[name].append(
        _el(
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
    points = " ".join(f"{_num(x)},{_num(y)}" for x, y in corners)
    d.owned[name].append(
        _el(
            "polygon",
            {"class": "arrow", "points": points, "fill": colour},
            _title(f"{name}: unbounded {'above' if upper else 'below'}"),
        )
    )


def _draw_range(
    layout: RangeLayout, colours: Mapping[str, str], ids: Mapping[str, str]
) -> _Drawing:
    d = _new_drawing(colours)
    slots: list[tuple[Any, Any, str | None]] = []
    for lo, hi, name in layout.intervals:
        if slots and slots[-1][1] != lo:
            slots.append((slots[-1][1], lo, None))  # a gap: no shard owns these keys
        slots.append((lo, hi, name))
    if not slots:
        return d
    width = (BAR_X1 - BAR_X0) / len(slots)
    for i, (lo, hi, name) in enumerate(slots):
        x0, x1 = BAR_X0 + i * width, BAR_X0 + (i + 1) * width
        interval = format_interval(lo, hi)
        if name is None:
            _slot(d, None, x0, x1, GAP_COLOUR, f"no shard owns {interval}: NoShardForKey")
            d.common.append(
                _el(
                    "rect",
                    {
                        "x": x0,
                        "y": BAR_Y,
                        "width": x1 - x0,
                        "height": BAR_H,
                        "fill": f"url(#{ids['gap']})",
                    },
                )
            )
            continue
        _slot(d, name, x0, x1, colours[name], f"{name}: keys in {interval}")
        _slot_label(d, name, x0, x1, name)
    first_lo, last_hi = slots[0][0], slots[-1][1]
    if first_lo is None and slots[0][2]:
        _unbounded_end(d, slots[0][2], colours[slots[0][2]], ids["hatch"], upper=False)
    if last_hi is None and slots[-1][2]:
        _unbounded_end(d, slots[-1][2], colours[slots[-1][2]], ids["hatch"], upper=True)
    marks = []
    for i in range(len(slots) + 1):
        value = slots[0][0] if i == 0 else slots[i - 1][1]
        upper = i == len(slots)
        if value is None:
            label = "+∞" if upper else "−∞"
            x = BAR_X1 + 20 if upper else BAR_X0 - 20
        else:
            label = _fit(format_bound(value, upper=upper), 130, 11) or "…"
            x = BAR_X0 + i * width
        marks.append((x, label, f"bound {format_bound(value, upper=upper)}"))
    _boundary_labels(d, marks)
    for lo, hi, name in layout.intervals:
        d.owns_title.setdefault(name, f"{name} owns")
        d.owns_title[name] += f" {format_interval(lo, hi)}"
    return d


def _fraction_label(point: int) -> str:
    """A boundary of the 64-bit space as a fraction of 2^64: ``0``, ``1/4``, ``2⁶⁴``."""
    if point == 0:
        return "0"
    if point == SPACE:
        return "2⁶⁴"
    exact = Fraction(point, SPACE)
    near = exact.limit_denominator(4096)
    if abs(near * SPACE - point) <= 1:  # i * 2**64 // n is within one point of i/n
        return f"{near.numerator}/{near.denominator}"
    return f"{float(exact):.4f}"


def _percent(share: float) -> str:
    pct = 100 * share
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}%"


def _draw_hash(layout: HashLayout, colours: Mapping[str, str]) -> _Drawing:
    d = _new_drawing(colours)
    span = BAR_X1 - BAR_X0
    marks = [(BAR_X0, "0", "point 0x0000000000000000")]
    for lo, hi, name in layout.intervals:
        x0, x1 = BAR_X0 + span * lo / SPACE, BAR_X0 + span * hi / SPACE
        share = (hi - lo) / SPACE
        tip = f"{name}: points [0x{lo:016x}, 0x{hi:016x}), {_percent(share)} of the hash space"
        _slot(d, name, x0, x1, colours[name], tip)
        _slot_label(d, name, x0, x1, f"{name} · {_percent(share)}")
        marks.append((x1, _fraction_label(hi), f"point 0x{hi:016x}" if hi < SPACE else "2**64"))
        d.owns_title.setdefault(name, f"{name} owns")
        d.owns_title[name] += f" [{_fraction_label(lo)}, {_fraction_label(hi)})"
    _boundary_labels(d, marks)
    return d


def _draw_slices(
    names: Sequence[str],
    colours: Mapping[str, str],
    shares: Mapping[str, float | None],
    *,
    modulo: bool,
) -> _Drawing:
    """Equal slices (modulo), or slices proportional to ``shares`` when every one is known."""
    d = _new_drawing(colours)
    if not names:
        return d
    known = [shares.get(n) for n in names]
    total = sum(s for s in known if s) if all(s is not None for s in known) else 0
    weights = [(s or 0) / total for s in known] if total else [1 / len(names)] * len(names)
    x = BAR_X0
    for i, (name, weight) in enumerate(zip(names, weights, strict=True)):
        x1 = x + (BAR_X1 - BAR_X0) * weight
        if modulo:
            rule = f"md5 % {len(names)} = {i}"
            _slot(d, name, x, x1, colours[name], f"{name}: keys with {rule}")
            label = _fit(rule, x1 - x - 4, 11)
            if label:
                d.owned[name].append(
                    _text(
                        (x + x1) / 2,
                        BAR_Y + BAR_H + 18,
                        label,
                        text_anchor="middle",
                        font_size=11,
                        fill=MUTED,
                    )
                )
            d.owns_title[name] = f"{name} owns keys with {rule}"
        else:
            _slot(d, name, x, x1, colours[name], f"{name}: {_percent(weight)} of the keys")
        _slot_label(d, name, x, x1, f"{name} · {_percent(weight)}")
        x = x1
    return d


def _ring_xy(angle: float, radius: float = RING_R) -> tuple[float, float]:
    """A point at ``angle`` radians, clockwise from twelve o'clock."""
    return RING_CX + radius * math.sin(angle), RING_CY - radius * math.cos(angle)


def ring_arcs(layout: RingLayout) -> list[tuple[int, int, str]]:
    """``(start, end, shard)`` arcs in ring order, neighbours of one owner merged: each
    token owns the arc from the previous token (exclusive) to itself (inclusive); the first
    token's arc starts below zero (at the last token minus the ring size)."""
    ring = sorted((t, name) for name, owned in layout.tokens.items() for t in owned)
    arcs: list[tuple[int, int, str]] = []
    for i, (token, name) in enumerate(ring):
        start = ring[i - 1][0] if i else ring[-1][0] - RING
        if arcs and arcs[-1][2] == name:
            arcs[-1] = (arcs[-1][0], token, name)
        else:
            arcs.append((start, token, name))
    return arcs


def _draw_ring(layout: RingLayout, colours: Mapping[str, str]) -> _Drawing:
    d = _new_drawing(colours)
    arcs = ring_arcs(layout)
    common = {"fill": "none", "stroke-width": RING_STROKE}
    d.common.append(
        _el(
            "circle",
            {"cx": RING_CX, "cy": RING_CY, "r": RING_R, "stroke": GAP_COLOUR, **common},
        )
    )
    if len({name for _, _, name in arcs}) == 1:
        name = arcs[0][2]
        d.owned[name].append(
            _el(
                "circle",
                {
                    "class": "arc",
                    "cx": RING_CX,
                    "cy": RING_CY,
                    "r": RING_R,
                    "stroke": colours[name],
                    **common,
                },
            )
        )
    else:
        for start, end, name in arcs:
            a0, a1 = 2 * math.pi * start / RING, 2 * math.pi * end / RING
            (x0, y0), (x1, y1) = _ring_xy(a0), _ring_xy(a1)
            large = 1 if a1 - a0 > math.pi else 0
            path = (
                f"M{_num(x0)} {_num(y0)} "
                f"A{_num(RING_R)} {_num(RING_R)} 0 {large} 1 {_num(x1)} {_num(y1)}"
            )
            d.owned[name].append(
                _el("path", {"class": "arc", "d": path, "stroke": colours[name], **common})
            )
    # zero at twelve o'clock, points grow clockwise
    top = RING_CY - RING_R
    d.common.append(
        _el(
            "g",
            {"class": "ring-zero"},
            _title("point 0 of the SHA-1 ring; points grow clockwise"),
            _el(
                "line",
                {
                    "x1": RING_CX,
                    "y1": top - RING_STROKE / 2 - 6,
                    "x2": RING_CX,
                    "y2": top + RING_STROKE / 2 + 2,
                    "stroke": INK,
                    "stroke-width": 2,
                },
            ),
            _text(
                RING_CX,
                top - RING_STROKE / 2 - 10,
                "0 → clockwise",
                text_anchor="start",
                font_size=11,
                fill=MUTED,
            ),
        )
    )
    tokens = sum(len(t) for t in layout.tokens.values())
    d.common.append(
        _text(RING_CX, RING_CY - 4, "SHA-1 ring", text_anchor="middle", font_weight="600")
    )
    d.common.append(
        _text(RING_CX, RING_CY + 14, f"{_count(tokens)} tokens", text_anchor="middle", fill=MUTED)
    )
    for name, owned in layout.tokens.items():
        d.owns_title[name] = f"{name} owns {len(owned)} tokens"
    return d


# --- the per-shard panel -------------------------------------------------------------------


def _rows_tip(shard: ShardStatus) -> str:
    total = shard.total_rows
    parts = ", ".join(
        f"{label} {'?' if n is None else _count(n)}" for label, n in shard.rows.items()
    )
    kind = "exact counts" if shard.rows_exact else "estimates"
    head = "rows unknown" if total is None else f"{_count(total)} rows"
    return f"{shard.name}: {head} ({parts or 'no sharded models'}; {kind})"


def _health_dot(h: AliasHealth, x: float, y: float) -> str:
    state = health_state(h)
    attrs = {
        "class": f"health health-{state}",
        "data-alias": h.alias,
        "data-role": h.role,
        "data-health": state,
        "fill": HEALTH_COLOURS[state],
        "stroke": "#fff" if state == "ok" else INK,
        "stroke-width": 1,
    }
    tip = f"{h.alias} ({h.role}): {h.problem or 'ok'}"
    if h.role == "replica" and h.lag_seconds is not None:
        tip += f", lag {h.lag_seconds:g}s"
    if h.role == "primary":
        shape = _el(
            "rect",
            {**attrs, "x": x - 6.5, "y": y - 6.5, "width": 13, "height": 13, "rx": 2},
            _title(tip),
        )
    else:
        shape = _el("circle", {**attrs, "cx": x, "cy": y, "r": 6}, _title(tip))
    return shape


@dataclass
class _Panel:
    x0: float
    y0: float
    width: float
    name_w: float
    share_w: float
    dots_w: float

    @property
    def share_x(self) -> float:
        return self.x0 + 20 + self.name_w

    @property
    def dots_x(self) -> float:
        return self.share_x + self.share_w + 18

    @property
    def bar_x(self) -> float:
        return self.dots_x + self.dots_w + 12

    @property
    def bar_w(self) -> float:
        return max(self.x0 + self.width - 150 - self.bar_x, 40)


def _panel(group: GroupStatus, x0: float, y0: float, width: float, show_share: bool) -> _Panel:
    longest = max((len(s.name) for s in group.shards), default=4)
    aliases = max((len(s.health) for s in group.shards), default=1)
    return _Panel(
        x0=x0,
        y0=y0,
        width=width,
        name_w=min(max(longest, 5) * 12 * CHAR_WIDTH + 12, 140),
        share_w=62 if show_share else 0,
        dots_w=max(16 * aliases, 44),  # room for the "health" heading
    )


def _panel_header(p: _Panel, mean_x: float | None) -> list[str]:
    y = p.y0 + 12
    out = [
        _text(p.x0, y, "shard", font_size=11, fill=MUTED),
        _text(p.dots_x - 6, y, "health", font_size=11, fill=MUTED),
    ]
    if p.share_w:
        out.append(
            _text(p.share_x + p.share_w, y, "share", font_size=11, fill=MUTED, text_anchor="end")
        )
    if mean_x is None or mean_x - 20 > p.bar_x + 30:  # "mean" would cover "rows": one goes
        out.append(_text(p.bar_x, y, "rows", font_size=11, fill=MUTED))
    if mean_x is not None:
        out.append(_text(mean_x, y, "mean", font_size=11, fill=MUTED, text_anchor="middle"))
    return out


def _panel_row(
    p: _Panel,
    i: int,
    shard: ShardStatus,
    colour: str,
    max_rows: int,
    show_share: bool,
) -> list[str]:
    y = p.y0 + 24 + i * ROW_H + ROW_H / 2  # the row's middle
    out = [
        _el(
            "rect",
            {
                "class": "swatch",
                "x": p.x0,
                "y": y - 7,
                "width": 14,
                "height": 14,
                "rx": 2,
                "fill": colour,
            },
        ),
        _text(
            p.x0 + 20,
            y + 4,
            _fit(shard.name, p.name_w - 4),
            font_weight="600",
            font_style="italic" if shard.pending else None,
            **{"class": "shard-name"},
        ),
    ]
    if show_share:
        share = (
            "pending" if shard.pending else "—" if shard.share is None else _percent(shard.share)
        )
        out.append(
            _text(
                p.share_x + p.share_w,
                y + 4,
                share,
                text_anchor="end",
                fill=MUTED,
                **{"class": "share"},
            )
        )
    elif shard.pending:
        out.append(_text(p.share_x, y + 4, "pending", fill=MUTED, font_style="italic"))
    dots = [_health_dot(h, p.dots_x + 16 * j, y) for j, h in enumerate(shard.health)]
    out.append(_el("g", {"class": "health-dots"}, *dots))
    total = shard.total_rows
    tip = _title(_rows_tip(shard))
    if total is None:
        out.append(
            _el("g", {"class": "rows"}, tip, _text(p.bar_x, y + 4, "rows unknown", fill=MUTED))
        )
        return out
    length = p.bar_w * total / max_rows if max_rows else 0
    bar = _el(
        "rect",
        {
            "class": "rows-bar hot" if shard.hot else "rows-bar",
            "x": p.bar_x,
            "y": y - 8,
            "width": max(length, 1.0),
            "height": 16,
            "fill": colour,
            "stroke": HOT_COLOUR if shard.hot else None,
            "stroke-width": 2.5 if shard.hot else None,
        },
    )
    label = ("" if shard.rows_exact else "≈ ") + f"{_count(total)} rows"
    # a white halo keeps the label readable where it crosses the mean line
    halo = {"stroke": "#fff", "stroke_width": 4, "paint_order": "stroke", "class": "rows-label"}
    parts = [tip, bar, _text(p.bar_x + length + 8, y + 4, label, fill=INK, **halo)]
    if shard.hot:
        parts.append(
            _text(
                p.bar_x + length + 14 + _text_width(label),
                y + 4,
                "HOT",
                fill=HOT_COLOUR,
                font_weight="700",
                **{"class": "hot-label"},
            )
        )
    out.append(_el("g", {"class": "rows"}, *parts))
    return out


def _mean_line(group: GroupStatus, p: _Panel, max_rows: int) -> tuple[float | None, str]:
    totals = [s.total_rows for s in group.shards if not s.pending]
    if not max_rows or not totals or any(t is None for t in totals):
        return None, ""
    mean = sum(totals) / len(totals)  # type: ignore[arg-type]
    x = p.bar_x + p.bar_w * mean / max_rows
    y0, y1 = p.y0 + 18, p.y0 + 24 + ROW_H * len(group.shards)
    line = _el(
        "line",
        {
            "class": "mean",
            "x1": x,
            "y1": y0,
            "x2": x,
            "y2": y1,
            "stroke": MUTED,
            "stroke-width": 1,
            "stroke-dasharray": "4 3",
        },
        _title(f"mean rows per shard: {mean:,.0f} (hot: over {HOT_FACTOR:g}x the mean)"),
    )
    return x, line


def _legend(y: float) -> list[str]:
    out = []
    x = 0.0
    for state in ("ok", "lagging", "down"):
        out.append(_el("circle", {"cx": x + 6, "cy": y - 4, "r": 6, "fill": HEALTH_COLOURS[state]}))
        out.append(_text(x + 16, y, state, font_size=11, fill=MUTED))
        x += 26 + _text_width(state, 11) + 10
    x += 10
    out.append(
        _el("rect", {"x": x, "y": y - 10.5, "width": 13, "height": 13, "rx": 2, "fill": MUTED})
    )
    out.append(_text(x + 18, y, "primary", font_size=11, fill=MUTED))
    x += 18 + _text_width("primary", 11) + 14
    out.append(_el("circle", {"cx": x + 6, "cy": y - 4, "r": 6, "fill": MUTED}))
    out.append(_text(x + 16, y, "replica", font_size=11, fill=MUTED))
    x += 16 + _text_width("replica", 11) + 24
    out.append(
        _el(
            "rect",
            {
                "x": x,
                "y": y - 10,
                "width": 22,
                "height": 12,
                "fill": "none",
                "stroke": HOT_COLOUR,
                "stroke-width": 2.5,
            },
        )
    )
    out.append(
        _text(x + 28, y, f"hot: over {HOT_FACTOR:g}x the mean rows", font_size=11, fill=MUTED)
    )
    return [_el("g", {"class": "legend"}, *out)]


# --- the picture ---------------------------------------------------------------------------


def _caption(strategy: str, layout: Layout) -> str:
    if isinstance(layout, RangeLayout):
        return "range: the key itself; one slot per interval [lo, hi), bounds below"
    if isinstance(layout, HashLayout):
        return "hash: first 8 bytes of md5(key), bounds as fractions of 2⁶⁴"
    if isinstance(layout, ModuloLayout):
        return "modulo: md5(key) mod N, one equal slice per shard"
    return f"{strategy}: each shard's share of the points"


def shard_map_svg(group: GroupStatus, shard_map: ShardMap) -> SafeString:
    """The picture of ``group``'s map (``shard_map``) with its shards' health and rows."""
    index = {name: i for i, name in enumerate(shard_map.shards)}
    for shard in group.shards:
        index.setdefault(shard.name, len(index))
    colours = {name: shard_colour(i) for name, i in index.items()}
    layout = shard_map.layout
    ids = {"hatch": _dom_id(group.name, "hatch"), "gap": _dom_id(group.name, "gap")}
    ring = isinstance(layout, RingLayout)
    if ring:
        drawing = _draw_ring(layout, colours)
    elif isinstance(layout, RangeLayout):
        drawing = _draw_range(layout, colours, ids)
    elif isinstance(layout, HashLayout):
        drawing = _draw_hash(layout, colours)
    else:
        shares = shard_map.strategy.share(layout)
        drawing = _draw_slices(
            layout.shard_names(), colours, shares, modulo=isinstance(layout, ModuloLayout)
        )

    if ring:
        panel = _panel(group, RING_PANEL_X, 24, WIDTH - RING_PANEL_X, show_share=True)
    else:
        show_share = not isinstance(layout, RangeLayout)
        panel = _panel(group, 0, BAR_PANEL_Y, WIDTH, show_share=show_share)
    panel_bottom = panel.y0 + 24 + ROW_H * len(group.shards)
    body_bottom = (
        max(panel_bottom, RING_CY + RING_R + RING_STROKE / 2 + 10) if ring else panel_bottom
    )
    height = body_bottom + 34

    max_rows = max((s.total_rows or 0 for s in group.shards), default=0)
    mean_x, mean_line = _mean_line(group, panel, max_rows)

    shard_groups = []
    for i, shard in enumerate(group.shards):
        states = [health_state(h) for h in shard.health]
        owns = drawing.owned.get(shard.name, [])
        owns_tip = drawing.owns_title.get(shard.name) or f"{shard.name} owns {shard.owns}"
        if shard.pending:
            owns_tip = f"{shard.name} owns nothing yet (split target)"
        body = [
            _title(
                f"{shard.name}: primary {shard.primary}, replicas "
                f"{', '.join(shard.replicas) or 'none'}; owns {shard.owns}"
            )
        ]
        if owns:
            body.append(_el("g", {"class": "owns"}, _title(owns_tip), *owns))
        body += _panel_row(
            panel, i, shard, colours[shard.name], max_rows, show_share=panel.share_w > 0
        )
        shard_groups.append(
            _el(
                "g",
                {
                    "class": "shard hot" if shard.hot else "shard",
                    "id": _dom_id(group.name, f"shard-{shard.name}"),
                    "data-shard": shard.name,
                    "data-health": worst_state(states),
                    "data-hot": "true" if shard.hot else "false",
                    "data-pending": "true" if shard.pending else "false",
                    "data-colour": colours[shard.name],
                },
                *body,
            )
        )

    defs = _el(
        "defs",
        None,
        _el(
            "pattern",
            {
                "id": ids["hatch"],
                "width": 6,
                "height": 6,
                "patternUnits": "userSpaceOnUse",
                "patternTransform": "rotate(45)",
            },
            _el(
                "line",
                {
                    "x1": 0,
                    "y1": 0,
                    "x2": 0,
                    "y2": 6,
                    "stroke": "#fff",
                    "stroke-width": 3,
                    "stroke-opacity": 0.75,
                },
            ),
        ),
        _el(
            "pattern",
            {
                "id": ids["gap"],
                "width": 6,
                "height": 6,
                "patternUnits": "userSpaceOnUse",
                "patternTransform": "rotate(45)",
            },
            _el(
                "line", {"x1": 0, "y1": 0, "x2": 0, "y2": 6, "stroke": "#b0b0b0", "stroke-width": 2}
            ),
        ),
    )
    caption = (
        []
        if ring
        else [_text(BAR_X0 - 20, 18, _caption(group.strategy, layout), fill=MUTED, font_size=12)]
    )
    title = f"Shard map of group {group.name} ({group.strategy}, map version {shard_map.version})"
    svg = _el(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": "shard-map",
            "id": _dom_id(group.name, "map"),
            "data-group": group.name,
            "data-strategy": group.strategy,
            "data-version": shard_map.version,
            "viewBox": f"0 0 {WIDTH} {_num(height)}",
            "width": WIDTH,
            "height": _num(height),
            "role": "img",
            "font-family": FONT,
            "font-size": 12,
            "fill": INK,
        },
        _title(title),
        defs,
        *caption,
        _el("g", {"class": "key-space"}, *drawing.common),
        _el("g", {"class": "panel-header"}, *_panel_header(panel, mean_x)),
        mean_line,
        *shard_groups,
        *_legend(height - 12),
    )
    return mark_safe(svg)  # noqa: S308 - every text and attribute above went through escape()
