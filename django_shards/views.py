"""The staff-only status page: what ``shard_status`` reports, as HTML with a picture of
each group's map, or as JSON with ``?format=json``.

Mount it with ``path("shards/", include("django_shards.urls"))``. Every request probes
every alias (as ``shard_status`` does), so the page costs one connection per alias.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.safestring import SafeString
from django.views.decorators.cache import never_cache

from django_shards.conf import get_config
from django_shards.health import AliasHealth
from django_shards.shardmap import get_map
from django_shards.status import GroupStatus, ShardStatus, collect_status
from django_shards.status_svg import (
    HEALTH_COLOURS,
    health_state,
    shard_colour,
    shard_map_svg,
    worst_state,
)


@dataclass(frozen=True)
class AliasRow:
    """One alias of a shard, as the table shows it."""

    alias: str
    role: str
    state: str  # ok | lagging | down
    colour: str
    problem: str
    lag: str

    @classmethod
    def of(cls, health: AliasHealth) -> AliasRow:
        state = health_state(health)
        if health.role != "replica":
            lag = "—"
        elif health.lag_seconds is not None:
            lag = f"{health.lag_seconds:g} s"
        else:
            lag = "unknown" if health.reachable else "—"
        return cls(
            alias=health.alias,
            role=health.role,
            state=state,
            colour=HEALTH_COLOURS[state],
            problem=health.problem or "",
            lag=lag,
        )


@dataclass(frozen=True)
class ShardRow:
    status: ShardStatus
    colour: str
    state: str
    aliases: list[AliasRow]
    rows: list[str]  # one cell per model of the group, in GroupStatus.models order
    total: str
    share: str
    load: list[str]  # reads/s, writes/s, share of the group's queries ("?": unreadable)


@dataclass(frozen=True)
class GroupView:
    status: GroupStatus
    svg: SafeString
    shards: list[ShardRow]
    balance: str
    map_version: int
    splits: list[dict[str, Any]]  # GroupStatus.splits with "updated" as a datetime
    models: list[dict[str, str]]  # {"label": "app.Model", "name": "Model"}, columns of rows


def _rows_text(value: int | None, exact: bool) -> str:
    if value is None:
        return "?"
    return f"{value:,}" if exact else f"≈ {value:,}"


def _load_cells(load: dict[str, float] | None) -> list[str]:
    if load is None:
        return ["?", "?", "?"]
    return [
        f"{load['reads_per_second']:,.1f}",
        f"{load['writes_per_second']:,.1f}",
        f"{100 * load['share']:.1f}%",
    ]


def _group_view(group: GroupStatus) -> GroupView:
    # the map the status was read from: reading it again could fail (a dead catalog)
    shard_map = group.shard_map or get_map(group.name)
    order = {name: i for i, name in enumerate(shard_map.shards)}
    shards = []
    for shard in group.shards:
        aliases = [AliasRow.of(h) for h in shard.health]
        if shard.pending:
            share = "pending"
        elif shard.share is None:
            share = "—"
        else:
            share = f"{100 * shard.share:.1f}%"
        shards.append(
            ShardRow(
                status=shard,
                colour=shard_colour(order.get(shard.name, len(order))),
                state=worst_state(a.state for a in aliases),
                aliases=aliases,
                rows=[_rows_text(shard.rows.get(m), shard.rows_exact) for m in group.models],
                total=_rows_text(shard.total_rows, shard.rows_exact),
                share=share,
                load=_load_cells(shard.load),
            )
        )
    balance = group.balance
    return GroupView(
        status=group,
        svg=shard_map_svg(group, shard_map),
        shards=shards,
        balance="—" if balance is None else f"{balance:.2f}",
        map_version=shard_map.version,
        models=[{"label": m, "name": m.rpartition(".")[2]} for m in group.models],
        splits=[
            {**job, "updated": datetime.datetime.fromisoformat(job["updated"])}
            for job in group.splits
        ],
    )


@staff_member_required
@never_cache
def status(request: HttpRequest) -> HttpResponse:
    """The cluster's status. ``?group=NAME`` shows one group, ``?counts=exact`` counts rows
    exactly instead of reading estimates, ``?format=json`` answers
    ``ClusterStatus.as_dict()``. Staff only; never cached."""
    fmt = request.GET.get("format", "html")
    if fmt not in ("html", "json"):
        return HttpResponseBadRequest("format must be html or json")
    group = request.GET.get("group") or None
    if group is not None and group not in get_config().groups:
        raise Http404("No such shard group.")
    exact = request.GET.get("counts") == "exact"
    cluster = collect_status([group] if group else None, exact_counts=exact)
    if fmt == "json":
        return JsonResponse(cluster.as_dict(), json_dumps_params={"indent": 2})
    context = {
        "cluster": cluster,
        "groups": [_group_view(g) for g in cluster.groups],
        "problems": cluster.problems,
        "exact_counts": exact,
        "estimated": any(not s.rows_exact for g in cluster.groups for s in g.shards),
        "selected_group": group,
        "health_colours": HEALTH_COLOURS,
        "hot_factor": f"{get_config().hot_shard_factor:g}",
        "load_window": f"{get_config().load_window_seconds:g}",
        "generated": timezone.now(),
    }
    return render(request, "django_shards/status.html", context)
