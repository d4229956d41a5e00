"""How the status page draws a ``consistent_hash`` layout: the SHA-1 ring.

Arcs coloured by owner (each token owns the arc from the previous token), point 0 at
twelve o'clock, points growing clockwise; the per-shard panel goes beside the ring.
Registered for :class:`~django_shards.strategies.consistent_hash.RingLayout` by
``consistent_hash.py``.
"""

from __future__ import annotations

import math

from django_shards import svg
from django_shards.strategies.base import Strategy
from django_shards.strategies.consistent_hash import RING, RingLayout

RING_CX, RING_CY, RING_R, RING_STROKE = 165.0, 185.0, 120.0, 36.0
RING_PANEL_X = 340.0


def ring_xy(angle: float, radius: float = RING_R) -> tuple[float, float]:
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


def _zero_mark() -> str:
    """Point 0 at twelve o'clock; points grow clockwise."""
    top = RING_CY - RING_R
    tick = {
        "x1": RING_CX,
        "y1": top - RING_STROKE / 2 - 6,
        "x2": RING_CX,
        "y2": top + RING_STROKE / 2 + 2,
        "stroke": svg.INK,
        "stroke-width": 2,
    }
    return svg.el(
        "g",
        {"class": "ring-zero"},
        svg.title("point 0 of the SHA-1 ring; points grow clockwise"),
        svg.el("line", tick),
        svg.text(
            RING_CX,
            top - RING_STROKE / 2 - 10,
            "0 → clockwise",
            text_anchor="start",
            font_size=11,
            fill=svg.MUTED,
        ),
    )


def draw_ring(layout: RingLayout, strategy: Strategy, canvas: svg.Canvas) -> svg.Drawing:
    """The ring on the left, no caption; the panel beside it."""
    d = svg.Drawing.of(
        canvas,
        panel_x=RING_PANEL_X,
        panel_y=24,
        bottom=RING_CY + RING_R + RING_STROKE / 2 + 10,
    )
    colours = canvas.colours
    arcs = ring_arcs(layout)
    common = {"fill": "none", "stroke-width": RING_STROKE}
    circle = {"cx": RING_CX, "cy": RING_CY, "r": RING_R}
    d.common.append(svg.el("circle", {**circle, "stroke": svg.GAP_COLOUR, **common}))
    if len({name for _, _, name in arcs}) == 1:
        name = arcs[0][2]
        whole = {"class": "arc", **circle, "stroke": colours[name], **common}
        d.owned[name].append(svg.el("circle", whole))
    else:
        n = svg.num
        for start, end, name in arcs:
            a0, a1 = 2 * math.pi * start / RING, 2 * math.pi * end / RING
            (x0, y0), (x1, y1) = ring_xy(a0), ring_xy(a1)
            large = 1 if a1 - a0 > math.pi else 0
            path = f"M{n(x0)} {n(y0)} A{n(RING_R)} {n(RING_R)} 0 {large} 1 {n(x1)} {n(y1)}"
            d.owned[name].append(
                svg.el("path", {"class": "arc", "d": path, "stroke": colours[name], **common})
            )
    d.common.append(_zero_mark())
    tokens = sum(len(t) for t in layout.tokens.values())
    d.common.append(
        svg.text(RING_CX, RING_CY - 4, "SHA-1 ring", text_anchor="middle", font_weight="600")
    )
    d.common.append(
        svg.text(
            RING_CX,
            RING_CY + 14,
            f"{svg.count(tokens)} tokens",
            text_anchor="middle",
            fill=svg.MUTED,
        )
    )
    for name, owned in layout.tokens.items():
        d.owns_title[name] = f"{name} owns {len(owned)} tokens"
    return d
