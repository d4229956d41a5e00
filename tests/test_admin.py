"""The Django admin on sharded models, driven through the test client as a superuser.

Nothing in ``tests/testapp/admin.py`` knows about shards: a change list names no shard key,
so it fans out to every shard (count, ordering, pagination, search, filters, the date
hierarchy), and a change, delete or history page reads one row by pk. The data is spread
evenly over the four shards of the ``users`` group, interleaved so that neighbouring rows
of any ordering sit on different shards.

The tests are transactional: fan-out runs on worker threads, which only see committed
rows, and on MariaDB the admin's reads go to real replicas, so the tests wait for them
after writing. Writes made through the admin are checked on the owner's primary with
``strong()`` and on the other shards with ``on_shard()``.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

import django_shards
from django_shards import context, shard_for
from django_shards.shardmap import get_map
from tests.support.backend import wait_for_replicas
from tests.testapp.admin import PER_PAGE
from tests.testapp.models import Author, Follow, Post

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

UTC = datetime.UTC
PER_SHARD = 3
POSTS = 24
FIRST_POST = datetime.datetime(2022, 1, 10, 12, 0, tzinfo=UTC)
POST_STEP = datetime.timedelta(days=47)  # 24 posts from 2022-01 to 2024-12, all distinct


# -- data ------------------------------------------------------------------------------------


@dataclass
class World:
    shards: list[str]
    authors: list[Author]  # authors[i] lives on shards[i % 4]
    posts: list[Post]  # posts[j] is by authors[j % 12], created FIRST_POST + j * POST_STEP
    follows: list[Follow]

    def shard_of(self, obj) -> str:
        return shard_for(type(obj), obj.author_id if isinstance(obj, Post) else obj.pk).name


def user_shards() -> list[str]:
    return [s.name for s in get_map("users").owning_shards]


def committed():
    """After writing in the test body: no read-your-writes pins, replicas caught up."""
    context.clear_pins()
    wait_for_replicas()


@pytest.fixture
def world() -> World:
    shards = user_shards()
    buckets: dict[str, list[Author]] = {name: [] for name in shards}
    while any(len(b) < PER_SHARD for b in buckets.values()):
        a = Author()  # the Snowflake id is set now, so the shard is known before saving
        bucket = buckets[shard_for(Author, a.pk).name]
        if len(bucket) < PER_SHARD:
            bucket.append(a)
    now = timezone.now()
    authors = []
    for i in range(len(shards) * PER_SHARD):
        a = buckets[shards[i % len(shards)]][i // len(shards)]
        a.email = f"a{i:02d}@example.org"
        a.name = f"{'Writer' if i % 3 == 0 else 'Reader'} {i:02d}"
        a.score = i % 3
        a.joined = now - datetime.timedelta(days=3 * i)
        authors.append(a)
    Author.objects.bulk_create(authors)
    posts = [
        Post(
            author=authors[j % len(authors)],
            title=f"post-{j:02d}",
            likes=j % 4,
            created=FIRST_POST + j * POST_STEP,
        )
        for j in range(POSTS)
    ]
    Post.objects.bulk_create(posts)
    follows = [
        Follow(follower=a, followee=authors[(i + step) % len(authors)])
        for i, a in enumerate(authors)
        for step in (1, 5)
    ]
    Follow.objects.bulk_create(follows)
    committed()
    return World(shards, authors, posts, follows)


@pytest.fixture
def admin(client):
    user = get_user_model().objects.create_superuser("admin", "admin@example.org", "pw")
    assert user._state.db == "default"
    client.force_login(user)
    return client


# -- helpers ---------------------------------------------------------------------------------


def changelist(model) -> str:
    return reverse(f"admin:testapp_{model._meta.model_name}_changelist")


def change_url(obj) -> str:
    return reverse(f"admin:testapp_{obj._meta.model_name}_change", args=[obj.pk])


def get_cl(admin, model, query: str = ""):
    response = admin.get(changelist(model) + query)
    assert response.status_code == 200, response.content[:2000]
    return response, response.context["cl"]


def every_page(admin, model, query: str = "") -> list:
    """The rows of every page of a change list, in order."""
    rows, page = [], 1
    while True:
        sep = "&" if query else "?"
        _, cl = get_cl(admin, model, f"{query}{sep}p={page}" if page > 1 else query)
        rows.extend(cl.result_list)
        if page >= cl.paginator.num_pages:
            return rows
        page += 1


class _FormParser(HTMLParser):
    """The fields a browser would submit from the form with a given id."""

    def __init__(self, form_id: str | None):
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.data: list[tuple[str, str]] = []
        self._select: str | None = None
        self._select_value: str | None = None
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            if self.form_id is None:  # the page's own form: no id, posts (not the logout form)
                self.inside = "id" not in a and a.get("method") == "post"
            else:
                self.inside = a.get("id") == self.form_id
        if not self.inside:
            return
        if tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind in ("submit", "button", "image", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.data.append((a["name"], a.get("value") or ("on" if kind == "checkbox" else "")))
        elif tag == "select" and a.get("name"):
            self._select, self._select_value = a["name"], None
        elif tag == "option" and self._select is not None:
            if "selected" in a or self._select_value is None:
                if "selected" in a or not any(n == self._select for n, _ in self.data):
                    self._select_value = a.get("value", "")
        elif tag == "textarea" and a.get("name"):
            self._textarea, self._text = a["name"], []

    def handle_data(self, data):
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select" and self._select is not None:
            self.data.append((self._select, self._select_value or ""))
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self.data.append((self._textarea, "".join(self._text).lstrip("\n")))
            self._textarea = None


def form_data(response, form_id: str | None = None) -> dict[str, str | list[str]]:
    """What submitting the form would send (a name given several times maps to a list)."""
    parser = _FormParser(form_id)
    parser.feed(response.content.decode())
    assert parser.data, f"no form {form_id!r} in the page"
    data: dict[str, str | list[str]] = {}
    for name, value in parser.data:
        if name in data:
            old = data[name]
            data[name] = [*old, value] if isinstance(old, list) else [old, value]
        else:
            data[name] = value
    return data


def hierarchy_links(response) -> dict[str, dict[str, str]]:
    """The date hierarchy's drill-down links: title -> query parameters."""
    html = response.content.decode()
    nav = re.search(r'<nav class="toplinks"[^>]*>(.*?)</nav>', html, re.S)  # 6.1 adds aria
    assert nav, "no date hierarchy on the page"
    links = re.findall(r'<a href="\?([^"]*)"(?: class="date-back")?>([^<]*)</a>', nav.group(1))
    return {
        title.replace("&lsaquo;", "").strip(): dict(parse_qsl(query.replace("&amp;", "&")))
        for query, title in links
    }


def on_other_shards(world: World, obj) -> list[str]:
    """Shards other than the owner that hold a row with ``obj``'s pk (should be none)."""
    owner = world.shard_of(obj)
    model = type(obj)
    return [
        name
        for name in world.shards
        if name != owner and model.objects.on_shard(name).strong().filter(pk=obj.pk).exists()
    ]


# -- change lists ----------------------------------------------------------------------------


def test_changelist_counts_rows_of_every_shard(admin, world):
    response, cl = get_cl(admin, Author)
    assert cl.result_count == cl.full_result_count == len(world.authors) == 12
    assert cl.paginator.num_pages == 3
    assert {world.shard_of(a) for a in cl.result_list} == set(world.shards)
    content = response.content.decode()
    assert "12 authors" in content
    for a in world.authors[:PER_PAGE]:
        assert a.email in content

    _, cl = get_cl(admin, Post)
    assert cl.result_count == cl.full_result_count == POSTS
    _, cl = get_cl(admin, Follow)
    assert cl.result_count == len(world.follows)


def test_changelist_orders_by_a_column_both_ways_across_pages(admin, world):
    emails = sorted(a.email for a in world.authors)
    # ?o= indexes list_display (0 is the action checkbox): 1 = email, 3 = score
    assert [a.email for a in every_page(admin, Author, "?o=1")] == emails
    assert [a.email for a in every_page(admin, Author, "?o=-1")] == emails[::-1]
    # the admin appends the queryset's ordering (ModelAdmin.ordering: email) and -pk
    by_score = sorted(world.authors, key=lambda a: (a.score, a.email))
    assert [a.email for a in every_page(admin, Author, "?o=3")] == [a.email for a in by_score]
    by_score_desc = sorted(world.authors, key=lambda a: (-a.score, a.email))
    assert [a.email for a in every_page(admin, Author, "?o=-3")] == [a.email for a in by_score_desc]
    # two columns: score descending, then name descending
    two = sorted(world.authors, key=lambda a: a.name, reverse=True)
    two = sorted(two, key=lambda a: -a.score)
    assert [a.email for a in every_page(admin, Author, "?o=-3.-2")] == [a.email for a in two]

    titles = [p.title for p in world.posts]  # oldest first
    # Post: 4 = created; the default ordering is -created
    assert [p.title for p in every_page(admin, Post, "?o=4")] == titles
    assert [p.title for p in every_page(admin, Post, "?o=-4")] == titles[::-1]
    assert [p.title for p in every_page(admin, Post)] == titles[::-1]


def test_pagination_pages_hold_the_right_rows(admin, world):
    newest_first = [p.title for p in world.posts][::-1]
    pages = [newest_first[i : i + PER_PAGE] for i in range(0, POSTS, PER_PAGE)]
    assert len(pages) == 5
    for number, expected in enumerate(pages, start=1):
        response, cl = get_cl(admin, Post, f"?p={number}")
        assert cl.page_num == number
        assert [p.title for p in cl.result_list] == expected
        # each page mixes shards: neighbours in time belong to authors on different shards
        assert len({world.shard_of(p) for p in cl.result_list}) > 1
        # and was read from their replicas (default reads are eventual, nothing is pinned)
        assert [p._state.db for p in cl.result_list] == [
            shard_for(Post, p.author_id).replicas[0] for p in cl.result_list
        ]
        # list_select_related joined the author on the post's own shard
        assert [p.author.email for p in cl.result_list] == [
            world.authors[int(t[5:]) % 12].email for t in expected
        ]
    # the last page is short, "show all" lists everything on one page
    _, cl = get_cl(admin, Post, "?p=5")
    assert len(cl.result_list) == POSTS - 4 * PER_PAGE
    _, cl = get_cl(admin, Post, "?all=")
    assert cl.show_all and [p.title for p in cl.result_list] == newest_first
    # and a page past the end is the admin's usual answer (redirect with ?e=1)
    response = admin.get(changelist(Post) + "?p=99")
    assert response.status_code == 302 and "e=1" in response["Location"]


def test_search_finds_rows_on_several_shards(admin, world):
    writers = [a for a in world.authors if a.name.startswith("Writer")]
    _, cl = get_cl(admin, Author, "?q=writer")
    assert cl.result_count == len(writers) == 4
    assert sorted(a.email for a in cl.result_list) == sorted(a.email for a in writers)
    assert len({world.shard_of(a) for a in cl.result_list}) == 4
    assert cl.full_result_count == 12

    # Post: titles post-10 .. post-19, by ten different authors
    _, cl = get_cl(admin, Post, "?q=post-1")
    expected = [p for p in world.posts if p.title.startswith("post-1")]
    assert cl.result_count == 10
    assert [p.title for p in every_page(admin, Post, "?q=post-1")] == [
        p.title for p in sorted(expected, key=lambda p: p.created, reverse=True)
    ]
    assert len({world.shard_of(p) for p in expected}) == 4
    # through the join to the author (co-located): a03's posts are post-03 and post-15
    _, cl = get_cl(admin, Post, "?q=a03@example")
    assert sorted(p.title for p in cl.result_list) == ["post-03", "post-15"]
    # several words: every word must match (AND of ORs)
    _, cl = get_cl(admin, Author, "?q=reader+a1")
    assert sorted(a.email for a in cl.result_list) == ["a10@example.org", "a11@example.org"]
    # nothing matches
    response, cl = get_cl(admin, Author, "?q=nobody-by-that-name")
    assert cl.result_count == 0 and cl.full_result_count == 12
    assert "0 results" in response.content.decode()


def test_list_filters_narrow_the_change_list(admin, world):
    _, unfiltered = get_cl(admin, Author)
    # the plain field filter offers the distinct values found on all shards
    score_spec = next(s for s in unfiltered.filter_specs if s.field.name == "score")
    assert list(score_spec.lookup_choices) == [0, 1, 2]
    _, cl = get_cl(admin, Author, "?score=1")
    expected = sorted(a.email for a in world.authors if a.score == 1)
    assert [a.email for a in cl.result_list] == expected[:PER_PAGE]
    assert cl.result_count == len(expected) == 4
    assert len({world.shard_of(a) for a in every_page(admin, Author, "?score=1")}) == 4

    # the date filter: follow the "Past 7 days" link the page offers
    joined_spec = next(s for s in unfiltered.filter_specs if s.field.name == "joined")
    choice = next(c for c in joined_spec.choices(unfiltered) if c["display"] == "Past 7 days")
    _, cl = get_cl(admin, Author, choice["query_string"])
    recent = [a for a in world.authors if a.joined >= timezone.now() - datetime.timedelta(days=7)]
    assert sorted(a.email for a in cl.result_list) == sorted(a.email for a in recent)
    assert cl.result_count == 3 and len({world.shard_of(a) for a in recent}) == 3

    # filters combine with each other and with a search
    _, cl = get_cl(admin, Author, choice["query_string"] + "&score=1")
    assert [a.email for a in cl.result_list] == ["a01@example.org"]
    _, cl = get_cl(admin, Post, "?likes=2&q=post-")
    expected = [p for p in world.posts if p.likes == 2]
    assert cl.result_count == len(expected) == 6
    # a filter through the join to the follower (co-located with the follow)
    _, cl = get_cl(admin, Follow, "?follower__score=2")
    assert cl.result_count == 2 * sum(1 for a in world.authors if a.score == 2)


def test_date_hierarchy_drills_down_year_month_day(admin, world):
    response, cl = get_cl(admin, Post)
    years = hierarchy_links(response)
    assert sorted(years) == ["2022", "2023", "2024"]

    response, cl = get_cl(admin, Post, "?" + "&".join(f"{k}={v}" for k, v in years["2023"].items()))
    in_2023 = [p for p in world.posts if p.created.year == 2023]
    assert cl.result_count == len(in_2023)
    months = hierarchy_links(response)
    assert "All dates" in months
    expected_months = sorted({p.created.month for p in in_2023})
    found_months = sorted(int(q["created__month"]) for t, q in months.items() if t != "All dates")
    assert found_months == expected_months
    assert len({world.shard_of(p) for p in in_2023}) > 1

    month = expected_months[0]
    params = next(q for q in months.values() if q.get("created__month") == str(month))
    response, cl = get_cl(admin, Post, "?" + "&".join(f"{k}={v}" for k, v in params.items()))
    in_month = [p for p in in_2023 if p.created.month == month]
    assert sorted(p.title for p in cl.result_list) == sorted(p.title for p in in_month)
    days = hierarchy_links(response)
    day_params = [q for q in days.values() if "created__day" in q]
    assert sorted(int(q["created__day"]) for q in day_params) == sorted(
        p.created.day for p in in_month
    )
    q = day_params[0]
    _, cl = get_cl(admin, Post, "?" + "&".join(f"{k}={v}" for k, v in q.items()))
    assert [p.created.day for p in cl.result_list] == [int(q["created__day"])]


# -- change, add, history --------------------------------------------------------------------


def test_change_view_get_and_post_saves_on_the_owners_primary(admin, world):
    post = world.posts[7]
    # opened from a searched change list, as a user would: the admin keeps the search
    url = change_url(post) + "?" + urlencode({"_changelist_filters": "q=post-0"})
    response = admin.get(url)
    assert response.status_code == 200
    assert response.context["original"].pk == post.pk
    data = form_data(response, "post_form")
    assert data["title"] == "post-07" and data["author"] == str(post.author_id)
    data.update(title="post-07 edited", likes="42", _save="Save")
    response = admin.post(url, data, follow=True)
    assert response.status_code == 200, response.content[:3000]
    assert response.redirect_chain[-1][0] == changelist(Post) + "?q=post-0"
    # the first page of the search: post-09 .. post-05, on several shards
    cl = response.context["cl"]
    rows = {p.pk: p for p in cl.result_list}
    assert [p.title for p in cl.result_list] == [
        "post-09", "post-08", "post-07 edited", "post-06", "post-05"
    ]  # fmt: skip
    # the redirect read its own write from the primary of the post's shard (the pin came
    # back in a cookie); the other shards were still read from their replicas
    shard = shard_for(Post, post.author_id)
    assert rows[post.pk]._state.db == shard.primary
    others = [p for p in rows.values() if world.shard_of(p) != shard.name]
    assert len({world.shard_of(p) for p in others}) == 3
    assert [p._state.db for p in others] == [
        shard_for(Post, p.author_id).replicas[0] for p in others
    ]
    saved = Post.objects.strong().get(pk=post.pk)
    assert (saved.title, saved.likes) == ("post-07 edited", 42)
    assert saved._state.db == shard_for(Post, post.author_id).primary
    assert on_other_shards(world, post) == []
    # the admin log lives on the catalog
    entry = LogEntry.objects.get(object_id=str(post.pk))
    assert entry._state.db == "default" and entry.is_change()


def test_change_view_of_an_author_edits_her_posts_inline(admin, world):
    author = world.authors[5]
    response = admin.get(change_url(author))
    assert response.status_code == 200
    inline = response.context["inline_admin_formsets"][0]
    # the inline's queryset names the author: her shard only (the last form is the template)
    assert sorted(f.original.title for f in inline if f.original) == ["post-05", "post-17"]
    data = form_data(response, "author_form")
    assert data["post_set-TOTAL_FORMS"] == "2"
    i = next(n for n in range(2) if data[f"post_set-{n}-title"] == "post-17")
    data.update({"name": "Renamed", f"post_set-{i}-title": "post-17 inline", "_save": "Save"})
    response = admin.post(change_url(author), data)
    assert response.status_code == 302, response.context and response.context.get("errors")
    shard = shard_for(Author, author.pk)
    saved = Author.objects.strong().get(pk=author.pk)
    assert saved.name == "Renamed" and saved._state.db == shard.primary
    edited = Post.objects.strong().get(title="post-17 inline")
    assert edited._state.db == shard.primary and edited.author_id == author.pk
    assert on_other_shards(world, author) == []


def test_add_view_creates_on_the_owners_shard(admin, world):
    author = world.authors[2]
    url = reverse("admin:testapp_post_add")
    assert admin.get(url).status_code == 200
    response = admin.post(
        url,
        {
            "author": str(author.pk),
            "title": "added through the admin",
            "likes": "3",
            "created_0": "2024-06-01",
            "created_1": "10:00:00",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.context and response.context.get("errors")
    post = Post.objects.strong().get(title="added through the admin")
    assert post._state.db == shard_for(Author, author.pk).primary
    assert on_other_shards(world, post) == []

    # a new author through the add view (its inline of posts left empty)
    url = reverse("admin:testapp_author_add")
    data = form_data(admin.get(url), "author_form")
    assert data["post_set-TOTAL_FORMS"] == "0"
    data.update(
        email="new@example.org",
        name="Newcomer",
        score="5",
        joined_0="2024-01-01",
        joined_1="00:00:00",
        _save="Save",
    )
    response = admin.post(url, data)
    assert response.status_code == 302, response.context and response.context.get("errors")
    new = Author.objects.strong().get(email="new@example.org")
    assert new._state.db == shard_for(Author, new.pk).primary
    assert on_other_shards(world, new) == []
    # both show in the change lists
    committed()
    _, cl = get_cl(admin, Author, "?q=newcomer")
    assert [a.pk for a in cl.result_list] == [new.pk]
    _, cl = get_cl(admin, Post, "?q=added+through")
    assert [p.pk for p in cl.result_list] == [post.pk]
    assert cl.full_result_count == POSTS + 1


def test_add_view_creates_an_author_with_an_inline_post_on_her_shard(admin, world):
    url = reverse("admin:testapp_author_add")
    data = form_data(admin.get(url), "author_form")
    data.update(
        {
            "email": "new@example.org",
            "name": "Newcomer",
            "score": "5",
            "joined_0": "2024-01-01",
            "joined_1": "00:00:00",
            "post_set-TOTAL_FORMS": "1",
            "post_set-0-title": "first words",
            "post_set-0-likes": "0",
            "post_set-0-created_0": "2024-01-02",
            "post_set-0-created_1": "08:00:00",
            "_save": "Save",
        }
    )
    response = admin.post(url, data)
    assert response.status_code == 302, response.context and response.context.get("errors")
    new = Author.objects.strong().get(email="new@example.org")
    shard = shard_for(Author, new.pk)
    assert new._state.db == shard.primary
    first = Post.objects.strong().get(title="first words")
    assert first.author_id == new.pk and first._state.db == shard.primary


def test_history_view_reads_the_row_and_the_catalogs_log(admin, world):
    post = world.posts[11]
    data = form_data(admin.get(change_url(post)), "post_form")
    data.update(likes="9", _save="Save")
    assert admin.post(change_url(post), data).status_code == 302
    url = reverse("admin:testapp_post_history", args=[post.pk])
    response = admin.get(url)
    assert response.status_code == 200
    assert response.context["object"].pk == post.pk
    assert len(response.context["action_list"]) == 1


# -- deleting --------------------------------------------------------------------------------


def test_delete_view_lists_related_posts_and_cascades_on_the_authors_shard(admin, world):
    author = world.authors[4]
    shard = shard_for(Author, author.pk)
    her_posts = sorted(p.title for p in world.posts if p.author_id == author.pk)
    assert her_posts == ["post-04", "post-16"]
    url = reverse("admin:testapp_author_delete", args=[author.pk])
    response = admin.get(url)
    assert response.status_code == 200
    content = response.content.decode()
    assert "Are you sure" in content
    for title in her_posts:
        assert title in content
    flat = str(response.context["deleted_objects"])
    assert "Post: " in flat and "Follow: " in flat
    assert dict(response.context["model_count"]) == {"authors": 1, "posts": 2, "follows": 2}

    response = admin.post(url, form_data(response))  # "Yes, I'm sure"
    assert response.status_code == 302
    assert not Author.objects.strong().filter(pk=author.pk).exists()
    assert not Post.objects.on_shard(shard.name).strong().filter(author_id=author.pk).exists()
    assert not Follow.objects.on_shard(shard.name).strong().filter(follower_id=author.pk).exists()
    # nothing else went: other authors, their posts and follows of her (DO_NOTHING) stay
    assert Author.objects.strong().count() == 11
    assert Post.objects.strong().count() == POSTS - 2
    assert Follow.objects.strong().filter(followee_id=author.pk).count() == 2


def test_delete_view_of_a_post(admin, world):
    post = world.posts[9]
    url = reverse("admin:testapp_post_delete", args=[post.pk])
    response = admin.get(url)
    assert response.status_code == 200 and "post-09" in response.content.decode()
    assert admin.post(url, form_data(response)).status_code == 302
    assert not Post.objects.strong().filter(pk=post.pk).exists()
    assert Post.objects.strong().count() == POSTS - 1


def select_and_delete(admin, model, rows, query="", select_across=False):
    """Tick ``rows`` on the change list, run "Delete selected", confirm; the final page."""
    data = {
        "action": "delete_selected",
        "select_across": "1" if select_across else "0",
        "index": "0",
        "_selected_action": [str(r.pk) for r in rows],
    }
    confirmation = admin.post(changelist(model) + query, data)
    assert confirmation.status_code == 200, confirmation.get("Location")
    assert "Are you sure" in confirmation.content.decode()
    response = admin.post(changelist(model) + query, form_data(confirmation), follow=True)
    assert response.status_code == 200
    return confirmation, response


def test_delete_selected_action_on_rows_of_several_shards(admin, world):
    # authors 0..3 are one per shard; each has 2 posts and 2 follows on her shard
    doomed = world.authors[:4]
    assert {world.shard_of(a) for a in doomed} == set(world.shards)
    confirmation, response = select_and_delete(admin, Author, doomed)
    for a in doomed:
        assert a.email in confirmation.content.decode()
    assert dict(confirmation.context["model_count"]) == {"authors": 4, "posts": 8, "follows": 8}
    assert "Successfully deleted 4 authors" in response.content.decode()
    gone = {a.pk for a in doomed}
    assert not Author.objects.strong().filter(pk__in=gone).exists()
    assert not Post.objects.strong().filter(author_id__in=gone).exists()
    assert not Follow.objects.strong().filter(follower_id__in=gone).exists()
    assert Author.objects.strong().count() == 8
    assert Post.objects.strong().count() == POSTS - 8
    # the change list after the redirect already reads the deletes (pinned shards)
    assert response.context["cl"].result_count == 8

    # posts ticked on a change list page: pk__in names no key, so the delete fans out
    committed()
    _, cl = get_cl(admin, Post)
    picked = list(cl.result_list)[:3]
    assert len({world.shard_of(p) for p in picked}) == 3
    confirmation, response = select_and_delete(admin, Post, picked)
    assert "Successfully deleted 3 posts" in response.content.decode()
    assert not Post.objects.strong().filter(pk__in=[p.pk for p in picked]).exists()
    assert Post.objects.strong().count() == POSTS - 11


def test_delete_selected_across_every_page_of_a_filtered_list(admin, world):
    """Ticking "select all 4" (select_across) deletes the whole filtered change list."""
    _, cl = get_cl(admin, Author, "?score=0")
    on_page = list(cl.result_list)
    assert cl.result_count == 4
    _, response = select_and_delete(admin, Author, on_page, "?score=0", select_across=True)
    assert "Successfully deleted 4 authors" in response.content.decode()
    assert Author.objects.strong().count() == 8
    assert sorted(Author.objects.strong().values_list("score", flat=True).distinct()) == [1, 2]


# -- follows: a reference to another shard ---------------------------------------------------


def test_follow_change_list_and_change_page_show_followees_on_other_shards(admin, world):
    response, cl = get_cl(admin, Follow, "?all=")
    content = response.content.decode()
    assert cl.result_count == 24
    crossing = [f for f in world.follows if world.shard_of(f.followee) != world.shard_of(f)]
    assert crossing
    for f in crossing[:3]:
        assert f.followee.email in content
    follow = crossing[0]
    response = admin.get(change_url(follow))
    assert response.status_code == 200
    # the raw-id widget names the followee, read from her own shard
    assert follow.followee.email in response.content.decode()


# -- without threads: inside the test's transaction ------------------------------------------


@pytest.mark.django_db(transaction=False, databases="__all__")
def test_change_list_inside_the_tests_transaction_with_strong_reads(client):
    """A non-transactional test: rows are uncommitted, so fan-out runs each shard in the
    calling thread (its connection is in the test's atomic block) and strong reads keep off
    the replicas."""
    user = get_user_model().objects.create_superuser("admin", "admin@example.org", "pw")
    client.force_login(user)
    authors = [Author(email=f"t{i}@example.org") for i in range(10)]
    Author.objects.bulk_create(authors)
    assert len({shard_for(Author, a.pk).name for a in authors}) > 1
    with django_shards.consistency("strong"):
        response = client.get(changelist(Author) + "?o=-1")
        cl = response.context["cl"]
        assert cl.result_count == 10
        assert [a.email for a in cl.result_list] == [f"t{i}@example.org" for i in (9, 8, 7, 6, 5)]
        response = client.get(change_url(authors[3]))
        assert response.status_code == 200
