"""How the status page draws a ``modulo`` layout: one equal slice per shard, named by the
remainder it owns. Registered for :class:`~django_shards.strategies.modulo.ModuloLayout`
by ``modulo.py``.
"""

from __future__ import annotations

from django_shards import svg
from django_shards.strategies.base import Strategy
from django_shards.strategies.modulo import ModuloLayout

CAPTION = "modulo: md5(key) mod N, one equal slice per shard"


def draw_modulo(layout: ModuloLayout, strategy: Strategy, canvas: svg.Canvas) -> svg.Drawing:
    d = svg.Drawing.of(canvas, caption=CAPTION)
    names = layout.shard_names()
    if not names:
        return d
    weights = svg.slice_weights(names, strategy.share(layout))
    for i, ((name, x0, x1), weight) in enumerate(
        zip(svg.slices(names, weights), weights, strict=True)
    ):
        rule = f"md5 % {len(names)} = {i}"
        svg.slot(d, name, x0, x1, canvas.colours[name], f"{name}: keys with {rule}")
        label = svg.fit(rule, x1 - x0 - 4, 11)
        if label:
            d.owned[name].append(
                svg.text(
                    (x0 + x1) / 2,
                    svg.BAR_Y + svg.BAR_H + 18,
                    label,
                    text_anchor="middle",
                    font_size=11,
                    fill=svg.MUTED,
                )
            )
        d.owns_title[name] = f"{name} owns keys with {rule}"
        svg.slot_label(d, name, x0, x1, f"{name} · {svg.percent(weight)}")
    return d
