"""How the status page draws a ``hash`` layout: a bar of the 64-bit point space.

Each interval's width is its share of ``[0, 2**64)``; boundaries are written as fractions
of 2^64. Registered for :class:`~django_shards.strategies.hash.HashLayout` by ``hash.py``.
"""

from __future__ import annotations

from fractions import Fraction

from django_shards import svg
from django_shards.strategies.base import Strategy
from django_shards.strategies.hash import SPACE, HashLayout

CAPTION = "hash: first 8 bytes of md5(key), bounds as fractions of 2⁶⁴"


def fraction_label(point: int) -> str:
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


def draw_hash(layout: HashLayout, strategy: Strategy, canvas: svg.Canvas) -> svg.Drawing:
    d = svg.Drawing.of(canvas, caption=CAPTION)
    span = svg.BAR_X1 - svg.BAR_X0
    marks = [(svg.BAR_X0, "0", "point 0x0000000000000000")]
    for lo, hi, name in layout.intervals:
        x0, x1 = svg.BAR_X0 + span * lo / SPACE, svg.BAR_X0 + span * hi / SPACE
        share = svg.percent((hi - lo) / SPACE)
        tip = f"{name}: points [0x{lo:016x}, 0x{hi:016x}), {share} of the hash space"
        svg.slot(d, name, x0, x1, canvas.colours[name], tip)
        svg.slot_label(d, name, x0, x1, f"{name} · {share}")
        marks.append((x1, fraction_label(hi), f"point 0x{hi:016x}" if hi < SPACE else "2**64"))
        d.owns_title.setdefault(name, f"{name} owns")
        d.owns_title[name] += f" [{fraction_label(lo)}, {fraction_label(hi)})"
    svg.boundary_labels(d, marks)
    return d
