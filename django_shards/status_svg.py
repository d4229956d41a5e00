"""The status page's picture of a group: its shard map with its shards' health and rows.

One ``<svg class="shard-map" data-group="NAME">`` per group, no script, no external asset:

- the key space, drawn by the drawer its strategy registered for the layout
  (``strategies/*_svg.py``: ``range`` and ``hash`` as a bar of intervals, ``modulo`` as
  equal slices, ``consistent_hash`` as a ring; any other layout as slices of its share);
- per shard: a colour swatch and name, one health dot per alias (square: primary, round:
  replica; green ok, amber lagging, red down), a bar of its rows and under it a thin bar of
  its load (share of the group's queries over ``LOAD_WINDOW_SECONDS``); the bar of what
  makes a shard hot (rows, load) is outlined in red.

Everything a shard contributes sits in one ``<g class="shard" data-shard="NAME">`` with
``<title>`` tooltips, so tests and stylesheets can find it. Every text and attribute is
escaped (:mod:`django_shards.svg`): the result is safe to put in a template as is, and
well-formed XML.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.utils.safestring import SafeString, mark_safe

from django_shards.conf import get_config
from django_shards.health import AliasHealth
from django_shards.shardmap import ShardMap
from django_shards.status import GroupStatus, ShardStatus
from django_shards.svg import (
    BAR_X0,
    CHAR_WIDTH,
    FONT,
    INK,
    MUTED,
    WIDTH,
    Canvas,
    count,
    dom_id,
    draw_layout,
    el,
    fit,
    num,
    percent,
    text,
    text_width,
    title,
)

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


def _hot_factor() -> str:
    return f"{get_config().hot_shard_factor:g}"


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


# --- the per-shard panel -------------------------------------------------------------------


def _rows_tip(shard: ShardStatus) -> str:
    total = shard.total_rows
    parts = ", ".join(
        f"{label} {'?' if n is None else count(n)}" for label, n in shard.rows.items()
    )
    kind = "exact counts" if shard.rows_exact else "estimates"
    head = "rows unknown" if total is None else f"{count(total)} rows"
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
        shape = el(
            "rect",
            {**attrs, "x": x - 6.5, "y": y - 6.5, "width": 13, "height": 13, "rx": 2},
            title(tip),
        )
    else:
        shape = el("circle", {**attrs, "cx": x, "cy": y, "r": 6}, title(tip))
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
        text(p.x0, y, "shard", font_size=11, fill=MUTED),
        text(p.dots_x - 6, y, "health", font_size=11, fill=MUTED),
    ]
    if p.share_w:
        out.append(
            text(p.share_x + p.share_w, y, "share", font_size=11, fill=MUTED, text_anchor="end")
        )
    if mean_x is None or mean_x - 20 > p.bar_x + 30:  # "mean" would cover "rows": one goes
        out.append(text(p.bar_x, y, "rows", font_size=11, fill=MUTED))
    if mean_x is not None:
        out.append(text(mean_x, y, "mean", font_size=11, fill=MUTED, text_anchor="middle"))
    return out


def _panel_row(
    p: _Panel,
    i: int,
    shard: ShardStatus,
    colour: str,
    max_rows: int,
    show_share: bool,
    max_share: float = 0.0,
) -> list[str]:
    y = p.y0 + 24 + i * ROW_H + ROW_H / 2  # the row's middle
    out = [
        el(
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
        text(
            p.x0 + 20,
            y + 4,
            fit(shard.name, p.name_w - 4),
            font_weight="600",
            font_style="italic" if shard.pending else None,
            **{"class": "shard-name"},
        ),
    ]
    if show_share:
        share = "pending" if shard.pending else "—" if shard.share is None else percent(shard.share)
        out.append(
            text(
                p.share_x + p.share_w,
                y + 4,
                share,
                text_anchor="end",
                fill=MUTED,
                **{"class": "share"},
            )
        )
    elif shard.pending:
        out.append(text(p.share_x, y + 4, "pending", fill=MUTED, font_style="italic"))
    dots = [_health_dot(h, p.dots_x + 16 * j, y) for j, h in enumerate(shard.health)]
    out.append(el("g", {"class": "health-dots"}, *dots))
    total = shard.total_rows
    tip = title(_rows_tip(shard))
    if total is None:
        out.append(
            el("g", {"class": "rows"}, tip, text(p.bar_x, y + 4, "rows unknown", fill=MUTED))
        )
        return out
    length = p.bar_w * total / max_rows if max_rows else 0
    hot_rows = "rows" in shard.hot
    bar = el(
        "rect",
        {
            "class": "rows-bar hot" if hot_rows else "rows-bar",
            "x": p.bar_x,
            "y": y - 10,
            "width": max(length, 1.0),
            "height": 13,
            "fill": colour,
            "stroke": HOT_COLOUR if hot_rows else None,
            "stroke-width": 2.5 if hot_rows else None,
        },
    )
    label = ("" if shard.rows_exact else "≈ ") + f"{count(total)} rows"
    if shard.load is not None:
        label += f" · {percent(shard.load['share'])} of load"
    # a white halo keeps the label readable where it crosses the mean line
    halo = {"stroke": "#fff", "stroke_width": 4, "paint_order": "stroke", "class": "rows-label"}
    parts = [tip, bar, text(p.bar_x + length + 8, y + 4, label, fill=INK, **halo)]
    parts += _load_bar(p, shard, colour, y, max_share)
    if shard.hot:
        parts.append(
            text(
                p.bar_x + length + 14 + text_width(label),
                y + 4,
                "HOT",
                fill=HOT_COLOUR,
                font_weight="700",
                **{"class": "hot-label"},
            )
        )
    out.append(el("g", {"class": "rows"}, *parts))
    return out


def _load_bar(p: _Panel, shard: ShardStatus, colour: str, y: float, max_share: float) -> list[str]:
    """The thin bar of the shard's load under its rows bar (nothing when unreadable)."""
    if shard.load is None:
        return []
    hot_load = "load" in shard.hot
    reads, writes = shard.load["reads_per_second"], shard.load["writes_per_second"]
    tip = (
        f"{shard.name}: {reads:.1f} reads/s, {writes:.1f} writes/s, "
        f"{percent(shard.load['share'])} of the group's queries"
        f" (over the last {get_config().load_window_seconds:g} s)"
    )
    length = p.bar_w * shard.load["share"] / max_share if max_share else 0
    return [
        el(
            "rect",
            {
                "class": "load-bar hot" if hot_load else "load-bar",
                "x": p.bar_x,
                "y": y + 5,
                "width": max(length, 1.0),
                "height": 5,
                "fill": colour,
                "fill-opacity": 0.6,
                "stroke": HOT_COLOUR if hot_load else None,
                "stroke-width": 1.5 if hot_load else None,
            },
            title(tip),
        )
    ]


def _mean_line(group: GroupStatus, p: _Panel, max_rows: int) -> tuple[float | None, str]:
    totals = [s.total_rows for s in group.shards if not s.pending]
    if not max_rows or not totals or any(t is None for t in totals):
        return None, ""
    mean = sum(totals) / len(totals)  # type: ignore[arg-type]
    x = p.bar_x + p.bar_w * mean / max_rows
    y0, y1 = p.y0 + 18, p.y0 + 24 + ROW_H * len(group.shards)
    line = el(
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
        title(f"mean rows per shard: {mean:,.0f} (hot: over {_hot_factor()}x the mean)"),
    )
    return x, line


def _legend(y: float) -> list[str]:
    out = []
    x = 0.0
    for state in ("ok", "lagging", "down"):
        out.append(el("circle", {"cx": x + 6, "cy": y - 4, "r": 6, "fill": HEALTH_COLOURS[state]}))
        out.append(text(x + 16, y, state, font_size=11, fill=MUTED))
        x += 26 + text_width(state, 11) + 10
    x += 10
    out.append(
        el("rect", {"x": x, "y": y - 10.5, "width": 13, "height": 13, "rx": 2, "fill": MUTED})
    )
    out.append(text(x + 18, y, "primary", font_size=11, fill=MUTED))
    x += 18 + text_width("primary", 11) + 14
    out.append(el("circle", {"cx": x + 6, "cy": y - 4, "r": 6, "fill": MUTED}))
    out.append(text(x + 16, y, "replica", font_size=11, fill=MUTED))
    x += 16 + text_width("replica", 11) + 24
    out.append(
        el(
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
        text(
            x + 28,
            y,
            f"hot: over {_hot_factor()}x the mean rows (thick bar) or load (thin bar)",
            font_size=11,
            fill=MUTED,
        )
    )
    return [el("g", {"class": "legend"}, *out)]


# --- the picture ---------------------------------------------------------------------------


def _patterns(canvas: Canvas) -> str:
    """The hatch patterns drawers may fill with: ``canvas.hatch`` and ``canvas.gap``."""
    return el(
        "defs",
        None,
        el(
            "pattern",
            {
                "id": canvas.hatch,
                "width": 6,
                "height": 6,
                "patternUnits": "userSpaceOnUse",
                "patternTransform": "rotate(45)",
            },
            el(
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
        el(
            "pattern",
            {
                "id": canvas.gap,
                "width": 6,
                "height": 6,
                "patternUnits": "userSpaceOnUse",
                "patternTransform": "rotate(45)",
            },
            el(
                "line", {"x1": 0, "y1": 0, "x2": 0, "y2": 6, "stroke": "#b0b0b0", "stroke-width": 2}
            ),
        ),
    )


def shard_map_svg(group: GroupStatus, shard_map: ShardMap) -> SafeString:
    """The picture of ``group``'s map (``shard_map``) with its shards' health and rows."""
    index = {name: i for i, name in enumerate(shard_map.shards)}
    for shard in group.shards:
        index.setdefault(shard.name, len(index))
    colours = {name: shard_colour(i) for name, i in index.items()}
    canvas = Canvas(colours, dom_id(group.name, "hatch"), dom_id(group.name, "gap"))
    drawing = draw_layout(shard_map.layout, shard_map.strategy, canvas)

    panel = _panel(
        group, drawing.panel_x, drawing.panel_y, WIDTH - drawing.panel_x, drawing.show_share
    )
    panel_bottom = panel.y0 + 24 + ROW_H * len(group.shards)
    height = max(panel_bottom, drawing.bottom) + 34

    max_rows = max((s.total_rows or 0 for s in group.shards), default=0)
    max_share = max((s.load["share"] for s in group.shards if s.load), default=0.0)
    mean_x, mean_line = _mean_line(group, panel, max_rows)

    shard_groups = []
    for i, shard in enumerate(group.shards):
        states = [health_state(h) for h in shard.health]
        owns = drawing.owned.get(shard.name, [])
        owns_tip = drawing.owns_title.get(shard.name) or f"{shard.name} owns {shard.owns}"
        if shard.pending:
            owns_tip = f"{shard.name} owns nothing yet (split target)"
        body = [
            title(
                f"{shard.name}: primary {shard.primary}, replicas "
                f"{', '.join(shard.replicas) or 'none'}; owns {shard.owns}"
                + (f"; demoted {', '.join(shard.demoted)}" if shard.demoted else "")
            )
        ]
        if owns:
            body.append(el("g", {"class": "owns"}, title(owns_tip), *owns))
        body += _panel_row(
            panel,
            i,
            shard,
            colours[shard.name],
            max_rows,
            show_share=panel.share_w > 0,
            max_share=max_share,
        )
        shard_groups.append(
            el(
                "g",
                {
                    "class": "shard hot" if shard.hot else "shard",
                    "id": dom_id(group.name, f"shard-{shard.name}"),
                    "data-shard": shard.name,
                    "data-health": worst_state(states),
                    "data-hot": "true" if shard.hot else "false",
                    "data-hot-reasons": " ".join(shard.hot),
                    "data-pending": "true" if shard.pending else "false",
                    "data-colour": colours[shard.name],
                },
                *body,
            )
        )

    caption = (
        []
        if drawing.caption is None
        else [text(BAR_X0 - 20, 18, drawing.caption, fill=MUTED, font_size=12)]
    )
    heading = f"Shard map of group {group.name} ({group.strategy}, map version {shard_map.version})"
    svg = el(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": "shard-map",
            "id": dom_id(group.name, "map"),
            "data-group": group.name,
            "data-strategy": group.strategy,
            "data-version": shard_map.version,
            "viewBox": f"0 0 {WIDTH} {num(height)}",
            "width": WIDTH,
            "height": num(height),
            "role": "img",
            "font-family": FONT,
            "font-size": 12,
            "fill": INK,
        },
        title(heading),
        _patterns(canvas),
        *caption,
        el("g", {"class": "key-space"}, *drawing.common),
        el("g", {"class": "panel-header"}, *_panel_header(panel, mean_x)),
        mean_line,
        *shard_groups,
        *_legend(height - 12),
    )
    return mark_safe(svg)  # noqa: S308 - every text and attribute above went through escape()
