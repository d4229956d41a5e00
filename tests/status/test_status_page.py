"""The staff-only status page (``django_shards.urls``): who may see it, what it shows, the
SVG picture of each group's map, health colours of a really unreachable replica, the JSON
format, and a render in a real headless browser.

The tests are transactional: the page probes every alias on the request's thread, and the
example cluster writes map versions to the catalog and creates split-target tables.

Set ``SHARDS_STATUS_SCREENSHOT=docs/images/status-page.png`` to keep the browser test's
screenshot (that is how the one in the docs was made).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.db import connections
from django.urls import reverse

from django_shards import shard_for
from django_shards.conf import Shard, get_config
from django_shards.models import SplitJob
from django_shards.resharding import plan_split
from django_shards.shardmap import ShardMap, get_map, write_version
from django_shards.status import HOT_MIN_ROWS, GroupStatus, ShardStatus
from django_shards.status_svg import HEALTH_COLOURS, shard_map_svg
from django_shards.strategies import Layout, Strategy, register_drawer
from django_shards.strategies.consistent_hash import RING, RingLayout, shard_tokens
from django_shards.strategies.consistent_hash_svg import ring_arcs
from django_shards.strategies.range import RangeLayout, RangeStrategy
from django_shards.svg import BAR_Y, Canvas, Drawing, el
from tests.support.backend import MARIADB, unreachable
from tests.testapp.models import Author, Event, Follow, LegacyCode, Post, Reading

SVG = "{http://www.w3.org/2000/svg}"
CHROMIUM = Path("/usr/bin/chromium")
db = pytest.mark.django_db(transaction=True, databases="__all__")


# -- helpers ---------------------------------------------------------------------------------


def status_url(**params: str) -> str:
    url = reverse("django_shards:status")
    return url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


def svgs_of(html: str) -> dict[str, ET.Element]:
    """Every ``<svg class="shard-map">`` of the page, parsed as XML, by group."""
    out = {}
    for chunk in re.findall(r"<svg\b.*?</svg>", html, flags=re.S):
        root = ET.fromstring(chunk)  # raises on anything that is not well-formed XML
        assert root.tag == f"{SVG}svg"
        out[root.get("data-group")] = root
    return out


def has_class(el: ET.Element, name: str) -> bool:
    return name in (el.get("class") or "").split()


def shard_groups(svg: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-shard"): g for g in svg.iter(f"{SVG}g") if has_class(g, "shard")}


def health_mark(svg: ET.Element, alias: str) -> ET.Element:
    (mark,) = [el for el in svg.iter() if el.get("data-alias") == alias]
    return mark


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    return client


# -- the example cluster: data in every group, a finished split, one in progress, a hot shard


def _create_tables(alias: str, models: list) -> None:
    with connections[alias].schema_editor() as editor:
        for model in models:
            editor.create_model(model)


def _drop_tables(alias: str, models: list) -> None:
    with connections[alias].schema_editor() as editor:
        for model in reversed(models):
            editor.delete_model(model)


def authors_on(counts: dict[str, int]) -> list[Author]:
    """Unsaved authors, ``counts[name]`` of them on each shard ``name``."""
    wanted, out = dict(counts), []
    while any(wanted.values()):
        a = Author(email="a@example.org")
        name = shard_for(Author, a.pk).name
        if wanted.get(name):
            a.email = f"author{len(out)}@{name}.example.org"
            out.append(a)
            wanted[name] -= 1
    return out


@pytest.fixture
def example_cluster():
    """``metrics`` after a finished hash split of s0 into s4 (map v2); ``users`` with s1
    hot (1,200 authors against 200 on the others) and a split s1 -> s5 in progress (s5
    pending); ``events`` and ``legacy`` as configured. Targets' tables dropped after."""
    users_models = [Author, Post, Follow]
    _create_tables("s4", [Reading])
    _create_tables("s5", users_models)
    try:
        metrics = get_map("metrics")
        write_version(
            "metrics",
            [*metrics.shards.values(), Shard("s4", "s4", ("s4_r1",))],
            metrics.strategy.split(metrics.layout, "s0", "s4"),
            note="split s0 -> s4",
        )
        users = get_map("users")
        s5 = Shard("s5", "s5", ("s5_r1",))
        new_layout = users.strategy.split(users.layout, "s1", "s5")
        write_version("users", [*users.shards.values(), s5], users.layout, note="s5 pending")
        SplitJob.objects.create(
            group="users",
            source="s1",
            target="s5",
            target_primary="s5",
            target_replicas=["s5_r1"],
            base_version=2,
            new_shards=[s.as_dict() for s in [*users.shards.values(), s5]],
            new_layout=new_layout.to_json(),
            phase=SplitJob.Phase.CATCHING_UP,
            progress={
                "mode": "online",
                "copy": {"testapp.Author": {"rows": 600, "complete": True}},
            },
        )
        authors = authors_on({"s0": 200, "s1": 1200, "s2": 200, "s3": 200})
        Author.objects.bulk_create(authors)
        Post.objects.bulk_create(
            Post(author=a, title=f"post {i}") for i, a in enumerate(authors[::4])
        )
        Event.objects.bulk_create(
            Event(account=(n * 37) % 3000, kind="pay", amount=n) for n in range(300)
        )
        Reading.objects.bulk_create(Reading(sensor_id=n, value=n / 10) for n in range(480))
        LegacyCode.objects.bulk_create(LegacyCode(code=f"C{n:03}") for n in range(60))
        yield
    finally:
        _drop_tables("s5", users_models)
        _drop_tables("s4", [Reading])


# -- who may see it --------------------------------------------------------------------------


@db
@pytest.mark.parametrize("params", [{}, {"format": "json"}])
def test_anonymous_visitor_is_sent_to_the_admin_login(client, params):
    response = client.get(status_url(**params))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/shards/")


@db
@pytest.mark.parametrize("params", [{}, {"format": "json"}])
def test_logged_in_user_who_is_not_staff_is_sent_to_the_admin_login(
    client, django_user_model, params
):
    user = django_user_model.objects.create_user("visitor", password="pw")
    client.force_login(user)
    response = client.get(status_url(**params))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert b"shard-map" not in response.content


# -- what staff see ---------------------------------------------------------------------------


@db
def test_staff_see_every_group_and_shard_with_one_picture_per_group(staff_client):
    response = staff_client.get(status_url())
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    html = response.content.decode()
    svgs = svgs_of(html)
    groups = get_config().groups
    assert set(svgs) == set(groups)
    for name in groups:
        shard_map = get_map(name)
        assert f'id="group-{name}"' in html
        assert svgs[name].get("data-strategy") == shard_map.strategy.name
        assert svgs[name].get("data-version") == "1"
        shards = shard_groups(svgs[name])
        assert list(shards) == list(shard_map.shards)  # one g.shard per shard, in map order
        for shard in shard_map.shards.values():
            assert f'data-shard="{shard.name}"' in html  # its row in the table
            for alias in shard.aliases:
                assert f"<code>{alias}</code>" in html
                assert health_mark(svgs[name], alias).get("data-health") == "ok"
            assert shards[shard.name].find(f"{SVG}title") is not None  # a tooltip
    assert "unhealthy" not in html


@db
def test_each_strategy_is_drawn_from_its_layout(staff_client):
    svgs = svgs_of(staff_client.get(status_url()).content.decode())

    # range: one slot per interval, unbounded ends as arrows, finite bounds written under
    events = svgs["events"]
    assert len([e for e in events.iter(f"{SVG}polygon") if has_class(e, "arrow")]) == 2
    bounds = [t.text for t in events.iter(f"{SVG}text") if has_class(t, "bound")]
    assert bounds == ["−∞", "1000", "2000", "+∞"]  # noqa: RUF001 - the look-alike character is the point of the test
    slots = [r for r in events.iter(f"{SVG}rect") if has_class(r, "slot")]
    assert [s.find(f"{SVG}title").text for s in slots] == [
        "s0: keys in [-inf, 1000)",
        "s1: keys in [1000, 2000)",
        "s2: keys in [2000, +inf)",
    ]

    # hash: widths proportional to the share of 2**64, boundaries as fractions of 2**64
    metrics = svgs["metrics"]
    widths = [float(r.get("width")) for r in metrics.iter(f"{SVG}rect") if has_class(r, "slot")]
    assert widths == pytest.approx([sum(widths) / 4] * 4, abs=0.02)
    bounds = [t.text for t in metrics.iter(f"{SVG}text") if has_class(t, "bound")]
    assert bounds == ["0", "1/4", "1/2", "3/4", "2⁶⁴"]

    # modulo: equal slices named by their remainder
    legacy = svgs["legacy"]
    titles = [r.find(f"{SVG}title").text for r in legacy.iter(f"{SVG}rect") if has_class(r, "slot")]
    assert titles == ["s0: keys with md5 % 2 = 0", "s1: keys with md5 % 2 = 1"]

    # consistent_hash: a ring of arcs, each shard's arcs in its own g.shard
    users = svgs["users"]
    for name, g in shard_groups(users).items():
        arcs = [p for p in g.iter(f"{SVG}path") if has_class(p, "arc")]
        assert arcs, name
        assert {p.get("stroke") for p in arcs} == {g.get("data-colour")}


def test_ring_arcs_are_owned_by_the_token_that_ends_them():
    layout = RingLayout({name: shard_tokens(name, 16) for name in ("a", "b", "c")})
    arcs = ring_arcs(layout)
    assert arcs[0][0] < 0 and arcs[-1][1] == max(max(t) for t in layout.tokens.values())
    for (_, end, _), (start, _, _) in itertools.pairwise(arcs):
        assert start == end  # contiguous: the arcs tile the ring once
    assert arcs[-1][1] - arcs[0][0] == RING
    for start, end, name in arcs:
        assert layout.locate(start % RING) == name  # the first point after the previous token
        assert layout.locate(end - 1) == name  # the last point before this token
    owned: dict[str, int] = {}
    for start, end, name in arcs:
        owned[name] = owned.get(name, 0) + end - start
    assert owned == layout.arcs()


@db
def test_an_unreachable_replica_is_drawn_red_everywhere_it_serves(staff_client):
    broken = "s2_r1"  # the replica of s2 in users, events and metrics
    with unreachable(broken):
        response = staff_client.get(status_url())
    html = response.content.decode()
    assert response.status_code == 200
    assert "unhealthy" in html
    assert re.search(r"<li>users/s2: s2_r1 unreachable: [^<]+</li>", html)
    svgs = svgs_of(html)
    for group in ("users", "events", "metrics"):
        mark = health_mark(svgs[group], broken)
        assert mark.get("data-health") == "down"
        assert mark.get("fill") == HEALTH_COLOURS["down"]
        assert "unreachable" in mark.find(f"{SVG}title").text
        assert shard_groups(svgs[group])["s2"].get("data-health") == "down"
        primary = health_mark(svgs[group], "s2")
        assert primary.get("fill") == HEALTH_COLOURS["ok"]
        if not MARIADB:  # on MariaDB a concurrent fault test may be upsetting other replicas
            assert shard_groups(svgs[group])["s1"].get("data-health") == "ok"
    assert re.search(r'<div class="state health-down"[^>]*data-alias="s2_r1"', html)  # table


@db
def test_hot_shard_pending_split_target_and_finished_split_are_shown(staff_client, example_cluster):
    html = staff_client.get(status_url(counts="exact")).content.decode()
    svgs = svgs_of(html)

    users = shard_groups(svgs["users"])
    assert list(users) == ["s0", "s1", "s2", "s3", "s5"]
    assert users["s1"].get("data-hot") == "true"
    assert [r for r in users["s1"].iter(f"{SVG}rect") if has_class(r, "hot")]
    assert "HOT" in "".join(users["s1"].itertext())
    assert users["s1"].get("data-hot-reasons") == "rows"
    # a load bar for every shard (no queries counted here: all at 0% of the load)
    for name, g in users.items():
        (load_bar,) = [r for r in g.iter(f"{SVG}rect") if has_class(r, "load-bar")]
        assert "0.0 reads/s, 0.0 writes/s" in load_bar.find(f"{SVG}title").text, name
    assert "Reads/s</th>" in html and "Writes/s</th>" in html
    assert all(users[n].get("data-hot") == "false" for n in ("s0", "s2", "s3", "s5"))
    assert users["s5"].get("data-pending") == "true"
    assert not users["s5"].findall(f".//{SVG}path")  # owns no arc of the ring yet
    assert "manage.py shard_split users s1 --to NEW --primary ALIAS" in html
    # the phase and mode, the rows copied, the catch-up lag (unknown without a stream)
    assert re.search(
        r"<td>s1</td><td>s5</td><td>catching_up \(online\)</td>\s*<td>600</td><td>—</td>", html
    )
    assert "testapp.Author 1,200" in "".join(users["s1"].itertext())  # the rows' tooltip

    metrics = svgs["metrics"]
    assert metrics.get("data-version") == "2"
    assert list(shard_groups(metrics)) == ["s0", "s1", "s2", "s3", "s4"]
    bounds = [t.text for t in metrics.iter(f"{SVG}text") if has_class(t, "bound")]
    assert bounds == ["0", "1/8", "1/4", "1/2", "3/4", "2⁶⁴"]
    s4_slot = [r for r in shard_groups(metrics)["s4"].iter(f"{SVG}rect") if has_class(r, "slot")]
    assert "12.5% of the hash space" in s4_slot[0].find(f"{SVG}title").text


@db
def test_json_format_is_the_cluster_status(staff_client, example_cluster):
    response = staff_client.get(status_url(format="json", counts="exact"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    data = json.loads(response.content)
    assert data["catalog"] == "default"
    assert [g["name"] for g in data["groups"]] == list(get_config().groups)
    users = next(g for g in data["groups"] if g["name"] == "users")
    assert users["strategy"] == "consistent_hash"
    assert users["version"] == 2
    assert [s["name"] for s in users["shards"]] == ["s0", "s1", "s2", "s3", "s5"]
    s1 = users["shards"][1]
    assert s1["hot"] == ["rows"] and s1["rows"]["testapp.Author"] == 1200
    assert users["splits"][0]["target"] == "s5"
    assert users["splits"][0]["copy"] == {"rows": 600, "tables_done": 1, "tables": 1}
    assert any("hot shard" in p for p in data["problems"])
    assert "PASSWORD" not in response.content.decode().upper()


@db
def test_one_group_can_be_asked_for_and_bad_input_is_refused(staff_client):
    html = staff_client.get(status_url(group="events")).content.decode()
    assert list(svgs_of(html)) == ["events"]
    assert staff_client.get(status_url(group="nope")).status_code == 404
    assert staff_client.get(status_url(format="xml")).status_code == 400


def offline_picture(
    group: str, layout: Layout, primaries: dict[str, str], strategy: Strategy | None = None
) -> ET.Element:
    """The SVG of a group with ``layout`` (a range group unless ``strategy`` says otherwise),
    drawn from a status made up here (no database), parsed as XML."""
    strategy = strategy or RangeStrategy()
    shard_map = ShardMap(
        group=group,
        version=1,
        strategy=strategy,
        layout=layout,
        shards={name: Shard(name, primary) for name, primary in primaries.items()},
    )
    shards = [
        ShardStatus(
            name=name,
            primary=primary,
            replicas=[],
            owns=strategy.describe(layout)[name],
            share=None,
            pending=False,
            health=[],
            rows={"app.M<x>": 3},
            rows_exact=True,
        )
        for name, primary in primaries.items()
    ]
    status = GroupStatus(group, strategy.name, 1, ["app.M<x>"], shards)
    svg = str(shard_map_svg(status, shard_map))
    assert "<b>" not in svg
    return ET.fromstring(svg)  # raises unless well-formed


def test_markup_in_names_and_bounds_is_escaped_and_the_svg_stays_well_formed():
    evil = '<b>"x" & y</b>'
    layout = RangeLayout([(None, "m<&>", evil), ("m<&>", None, "s'1")])
    root = offline_picture("g<&>", layout, {evil: "p<1>", "s'1": "p&2"})
    assert root.get("data-group") == "g<&>"
    assert list(shard_groups(root)) == [evil, "s'1"]
    assert "'m<&>'" in [t.text for t in root.iter(f"{SVG}text")]


def test_range_with_finite_ends_and_a_gap_draws_the_gap_and_no_arrows():
    layout = RangeLayout([(0, 10, "a"), (20, 30, "b")])
    root = offline_picture("g", layout, {"a": "s0", "b": "s1"})
    gaps = [r for r in root.iter(f"{SVG}rect") if has_class(r, "gap")]
    assert [g.find(f"{SVG}title").text for g in gaps] == ["no shard owns [10, 20): NoShardForKey"]
    assert not [p for p in root.iter(f"{SVG}polygon") if has_class(p, "arrow")]
    assert [t.text for t in root.iter(f"{SVG}text") if has_class(t, "bound")] == [
        "0",
        "10",
        "20",
        "30",
    ]


# -- a strategy of one's own ---------------------------------------------------------------


class ListedLayout(Layout):
    """Shards in a list, each owning what its weight says (a strategy written for a test)."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)

    def to_json(self) -> dict[str, float]:
        return self.weights

    def shard_names(self) -> tuple[str, ...]:
        return tuple(self.weights)


class UndrawnLayout(ListedLayout):
    """A layout whose strategy registered no drawer of its own."""


class ListedStrategy(Strategy):
    name = "listed"

    def point(self, key: object) -> object:
        return key

    def initial_layout(self, shards: object) -> ListedLayout:
        raise NotImplementedError

    def load_layout(self, data: dict[str, float]) -> ListedLayout:
        return ListedLayout(data)

    def locate(self, layout: Layout, point: object) -> str:
        return layout.shard_names()[0]

    def split(self, layout: Layout, source: str, target: str, at: object = None) -> Layout:
        raise NotImplementedError

    def share(self, layout: Layout) -> dict[str, float | None]:
        return dict(layout.weights)  # type: ignore[attr-defined]


def draw_listed(layout: ListedLayout, strategy: Strategy, canvas: Canvas) -> Drawing:
    drawing = Drawing.of(canvas, caption="listed: one tile per shard")
    for i, name in enumerate(layout.shard_names()):
        tile = {"class": "tile", "x": 60 * i, "y": BAR_Y, "width": 50, "height": 50}
        drawing.owned[name].append(el("rect", {**tile, "fill": canvas.colours[name]}))
    return drawing


register_drawer(ListedLayout, f"{__name__}.draw_listed")
register_drawer(UndrawnLayout, "django_shards.svg.draw_shares")


def test_a_custom_strategy_is_drawn_by_the_drawer_it_registered():
    layout = ListedLayout({"a": 0.25, "b": 0.75})
    root = offline_picture("g", layout, {"a": "s0", "b": "s1"}, ListedStrategy())
    assert root.get("data-strategy") == "listed"
    for name, g in shard_groups(root).items():
        (tile,) = [r for r in g.iter(f"{SVG}rect") if has_class(r, "tile")]
        assert tile.get("fill") == g.get("data-colour"), name
    assert "listed: one tile per shard" in [t.text for t in root.iter(f"{SVG}text")]


def test_a_layout_without_a_drawer_of_its_own_is_drawn_as_its_shares():
    layout = UndrawnLayout({"a": 0.25, "b": 0.75})
    root = offline_picture("g", layout, {"a": "s0", "b": "s1"}, ListedStrategy())
    slots = [r for r in root.iter(f"{SVG}rect") if has_class(r, "slot")]
    assert [s.find(f"{SVG}title").text for s in slots] == [
        "a: 25% of the keys",
        "b: 75% of the keys",
    ]
    assert float(slots[1].get("width")) == pytest.approx(3 * float(slots[0].get("width")), 0.01)


@db
def test_the_split_suggested_for_a_hot_range_shard_is_the_split_shard_split_plans(staff_client):
    accounts = [(i * 7) % 1000 for i in range(HOT_MIN_ROWS + 200)]  # all on s0: [-inf, 1000)
    Event.objects.bulk_create([Event(account=a, kind="open") for a in accounts])
    Event.objects.bulk_create([Event(account=1000 + i, kind="pay") for i in range(10)])
    Event.objects.bulk_create([Event(account=2000 + i, kind="pay") for i in range(10)])
    response = staff_client.get(status_url(format="json", counts="exact", group="events"))
    (s0,) = [s for s in response.json()["groups"][0]["shards"] if s["hot"]]
    suggested = s0["suggestion"].rpartition(" --at ")[2]

    plan = plan_split("events", "s0", "s4", "s4")  # no --at: the split's own default
    assert suggested == str(plan.at)
    assert plan.at == sorted(accounts)[len(accounts) // 2]


# -- in a real browser -----------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def chromium(*args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ]
    return subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


@db
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)"
)
def test_page_renders_in_a_headless_chromium(staff_client, example_cluster, tmp_path):
    """The page as staff get it (the example cluster, one replica down), saved to a file
    and opened by Chromium: the pictures are in the rendered DOM and the screenshot is a
    real image. The page has no script and loads nothing."""
    with unreachable("s2_r1"):
        html = staff_client.get(status_url(counts="exact")).content.decode()
    page = tmp_path / "status.html"
    page.write_text(html, encoding="utf-8")
    profile = str(tmp_path / "profile")

    dom = chromium(f"--user-data-dir={profile}", "--dump-dom", page.as_uri()).stdout
    svg_tag = '<svg xmlns="http://www.w3.org/2000/svg" class="shard-map"'
    assert dom.count(svg_tag) == len(get_config().groups)  # one per group
    rendered = svgs_of(dom)
    assert set(rendered) == set(get_config().groups)
    for name, svg in rendered.items():
        assert list(shard_groups(svg)) == list(get_map(name).shards)

    png = tmp_path / "status.png"
    height = 3450
    chromium(
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size=1060,{height}",
        page.as_uri(),
    )
    assert png.stat().st_size > 50_000  # a blank page of this size compresses to ~10 kB
    assert png_size(png) == (1060, height)
    keep = os.environ.get("SHARDS_STATUS_SCREENSHOT")
    if keep:
        shutil.copyfile(png, keep)
