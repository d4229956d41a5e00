"""How the status page draws a ``range`` layout: a bar of intervals.

One equal slot per interval ``[lo, hi)`` (and per gap no shard owns), bounds written under
the boundaries, an unbounded end drawn as a hatched end with an arrow. Registered for
:class:`~django_shards.strategies.range.RangeLayout` by ``range.py``.
"""

from __future__ import annotations

from typing import Any

from django_shards import svg
from django_shards.strategies.base import Strategy
from django_shards.strategies.range import RangeLayout, format_bound, format_interval

CAPTION = "range: the key itself; one slot per interval [lo, hi), bounds below"


def draw_range(layout: RangeLayout, strategy: Strategy, canvas: svg.Canvas) -> svg.Drawing:
    """The key space as slots in key order; no share column (a range has no share)."""
    d = svg.Drawing.of(canvas, caption=CAPTION, show_share=False)
    colours = canvas.colours
    slots: list[tuple[Any, Any, str | None]] = []
    for lo, hi, name in layout.intervals:
        if slots and slots[-1][1] != lo:
            slots.append((slots[-1][1], lo, None))  # a gap: no shard owns these keys
        slots.append((lo, hi, name))
    if not slots:
        return d
    width = (svg.BAR_X1 - svg.BAR_X0) / len(slots)
    for i, (lo, hi, owner) in enumerate(slots):
        x0, x1 = svg.BAR_X0 + i * width, svg.BAR_X0 + (i + 1) * width
        interval = format_interval(lo, hi)
        if owner is None:
            tip = f"no shard owns {interval}: NoShardForKey"
            svg.slot(d, None, x0, x1, svg.GAP_COLOUR, tip)
            hatching = {
                "x": x0,
                "y": svg.BAR_Y,
                "width": x1 - x0,
                "height": svg.BAR_H,
                "fill": f"url(#{canvas.gap})",
            }
            d.common.append(svg.el("rect", hatching))
            continue
        svg.slot(d, owner, x0, x1, colours[owner], f"{owner}: keys in {interval}")
        svg.slot_label(d, owner, x0, x1, owner)
    first, last = slots[0], slots[-1]
    if first[0] is None and first[2]:
        svg.unbounded_end(d, first[2], colours[first[2]], canvas.hatch, upper=False)
    if last[1] is None and last[2]:
        svg.unbounded_end(d, last[2], colours[last[2]], canvas.hatch, upper=True)
    marks = []
    for i in range(len(slots) + 1):
        value = slots[0][0] if i == 0 else slots[i - 1][1]
        upper = i == len(slots)
        if value is None:
            label = "+∞" if upper else "−∞"  # noqa: RUF001 - the typographic minus
            x = svg.BAR_X1 + 20 if upper else svg.BAR_X0 - 20
        else:
            label = svg.fit(format_bound(value, upper=upper), 130, 11) or "…"
            x = svg.BAR_X0 + i * width
        marks.append((x, label, f"bound {format_bound(value, upper=upper)}"))
    svg.boundary_labels(d, marks)
    for lo, hi, name in layout.intervals:
        d.owns_title.setdefault(name, f"{name} owns")
        d.owns_title[name] += f" {format_interval(lo, hi)}"
    return d
