"""Comparing the sharded models with their unsharded twins, for the differential tests
(``tests/fanout/test_differential.py``, ``tests/routing/test_differential_single_key.py``).

The same rows (same ids) are written to ``Author``/``Post`` (sharded by author in group
"users") and to ``AuthorTwin``/``PostTwin`` (plain models on ``default``). A query is run on
both :class:`Side` objects and what a user observes (:func:`outcome`) is compared; sharded
reads run under ``consistency("strong")`` (:func:`strong`), since a replica cannot see the
test's uncommitted rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from hypothesis import HealthCheck
from hypothesis import strategies as st

import django_shards
from django_shards import shard_for
from tests.testapp.models import Author, AuthorTwin, Post, PostTwin

#: hypothesis settings of every differential test
HYPOTHESIS: dict[str, Any] = dict(
    deadline=None,
    database=None,  # the dataset's ids change every run: a stored example would not replay
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

GROUP = django_settings.DJANGO_SHARDS["GROUPS"]["users"]
SHARD_NAMES = [s["NAME"] for s in GROUP["SHARDS"]]
PRIMARIES = [s["PRIMARY"] for s in GROUP["SHARDS"]]
REPLICAS = {r for s in GROUP["SHARDS"] for r in s["REPLICAS"]}


def _same_value(value: Any) -> Any:
    return value


def _same_path(path: str) -> str:
    return path


# -- the two sides ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """The sharded models or their twins; names a path the way this side spells it."""

    sharded: bool
    post: type[models.Model]
    author: type[models.Model]

    def name(self, path: str) -> str:
        """A lookup or field path on this side (``post__likes`` -> ``posttwin__likes``)."""
        if self.sharded:
            return path
        sign = "-" if path.startswith("-") else ""
        renames = {"post": "posttwin", "post_set": "posttwin_set"}
        parts = [renames.get(p, p) for p in path.lstrip("-").split("__")]
        return sign + "__".join(parts)

    def q(self, tree: tuple, value: Callable[[Any], Any] = _same_value) -> Q:
        """The ``Q`` of a drawn filter tree (:func:`trees`), its paths named for this side."""
        return to_q(tree, name=self.name, value=value)

    def author_obj(self, ds: Any, i: int) -> models.Model:
        """Author #``i`` of a dataset holding ``authors`` and their ``twins``."""
        return ds.authors[i] if self.sharded else ds.twins[i]

    def post_set(self, author: models.Model) -> models.Manager:
        return author.post_set if self.sharded else author.posttwin_set


SHARDED = Side(True, Post, Author)
TWIN = Side(False, PostTwin, AuthorTwin)


# -- normalising results so that both sides compare ------------------------------------------

_RENAMES = [("PostTwin", "Post"), ("AuthorTwin", "Author"), ("posttwin", "post")]


def sharded_text(s: str) -> str:
    """``s`` with the twins' names (models, reverse relation) replaced by the sharded ones."""
    for old, new in _RENAMES:
        s = s.replace(old, new)
    return s


def row(obj: models.Model, *extra: str) -> dict[str, Any]:
    """The concrete fields of ``obj`` (and the ``extra`` attributes), by attname."""
    out = {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}
    out.update({name: getattr(obj, name) for name in extra})
    return out


def norm(value: Any) -> Any:
    """``value`` with the twins' model names replaced by the sharded ones, rows as dicts."""
    if isinstance(value, models.Model):
        return (type(value).__name__.removesuffix("Twin"), row(value))
    if isinstance(value, dict):
        return {sharded_text(k) if isinstance(k, str) else k: norm(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named row
        return ("named", tuple(value._fields), tuple(norm(v) for v in value))
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    return value


def outcome(fn: Callable[[], Any]) -> Any:
    """What a user observes: the normalised result, or the exception raised."""
    try:
        return ("returned", norm(fn()))
    except IntegrityError as exc:  # the message names backend tables: compare the type
        return ("raised", type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - compared with the twin, never hidden
        return ("raised", type(exc).__name__, sharded_text(str(exc)))


def as_multiset(result: Any) -> Any:
    """An outcome whose rows are compared in any order."""
    if result[0] == "returned" and isinstance(result[1], list):
        return ("returned", sorted(result[1], key=repr))
    return result


@contextlib.contextmanager
def strong() -> Iterator[None]:
    with django_shards.consistency("strong"):
        yield


def both(run_sharded: Callable[[], Any], run_twin: Callable[[], Any]) -> tuple[Any, Any]:
    """(outcome of ``run_sharded``, read strongly; outcome of ``run_twin``)."""
    with strong():
        got = outcome(run_sharded)
    return got, outcome(run_twin)


def compare(run_sharded: Callable[[], Any], run_twin: Callable[[], Any], what: str) -> None:
    """Assert both calls have the same outcome."""
    got, expected = both(run_sharded, run_twin)
    assert got == expected, what


def results(fn: Callable[[Side], Any]) -> tuple[Any, Any]:
    """(sharded outcome, twin outcome) of ``fn(side)``."""
    return both(lambda: fn(SHARDED), lambda: fn(TWIN))


def same(fn: Callable[[Side], Any], *, ordered: bool = True, what: str = "") -> Any:
    """Assert the sharded side answers ``fn`` like the twin; returns the twin's answer."""
    got, expected = results(fn)
    if not ordered:
        got, expected = as_multiset(got), as_multiset(expected)
    assert got == expected, what
    return expected


# -- the tables ------------------------------------------------------------------------------


def table_contents() -> tuple[list, list, list, list]:
    """(sharded authors, twin authors, sharded posts, twin posts), each sorted by id.

    Reads every shard, and checks that each sharded row sits on the shard owning its key.
    """
    authors, posts = [], []
    with strong():
        for name in SHARD_NAMES:
            for a in Author.objects.on_shard(name):
                assert shard_for(Author, a.pk).name == name, f"author {a.pk} on {name}"
                authors.append(norm(a))
            for p in Post.objects.on_shard(name):
                assert shard_for(Post, p.author_id).name == name, f"post {p.pk} on {name}"
                posts.append(norm(p))
    by_id = lambda r: r[1]["id"]  # noqa: E731
    return (
        sorted(authors, key=by_id),
        sorted(map(norm, AuthorTwin.objects.all()), key=by_id),
        sorted(posts, key=by_id),
        sorted(map(norm, PostTwin.objects.all()), key=by_id),
    )


def assert_same_tables() -> None:
    authors, author_twins, posts, post_twins = table_contents()
    assert authors == author_twins
    assert posts == post_twins


@contextlib.contextmanager
def rolled_back() -> Iterator[None]:
    """A savepoint on the catalog and every shard primary, rolled back at the end."""
    aliases = ["default", *PRIMARIES]
    with contextlib.ExitStack() as stack:
        for alias in aliases:
            stack.enter_context(transaction.atomic(using=alias))
        yield
        for alias in aliases:
            transaction.set_rollback(True, using=alias)


# -- drawing filters -------------------------------------------------------------------------
#
# A filter is data: ("atom", (lookup, value)), ("not", tree), ("and"/"or", left, right).


def trees(atoms: st.SearchStrategy, *, max_leaves: int) -> st.SearchStrategy:
    """Filter trees of ``atoms`` joined by and/or/not, at most ``max_leaves`` atoms."""
    return st.recursive(
        atoms.map(lambda a: ("atom", a)),
        lambda kids: st.one_of(
            st.tuples(st.sampled_from(["and", "or"]), kids, kids),
            st.tuples(st.just("not"), kids),
        ),
        max_leaves=max_leaves,
    )


def steps(tree_strategy: st.SearchStrategy, *, max_size: int) -> st.SearchStrategy:
    """Chained ``.filter(q)`` / ``.exclude(q)`` calls, at most ``max_size``, as
    ``[(method, tree), ...]``."""
    return st.lists(
        st.tuples(st.sampled_from(["filter", "exclude"]), tree_strategy), max_size=max_size
    )


def to_q(
    tree: tuple,
    *,
    name: Callable[[str], str] = _same_path,
    value: Callable[[Any], Any] = _same_value,
) -> Q:
    """The ``Q`` of a filter tree; ``name`` renames each lookup, ``value`` resolves each
    value (a placeholder drawn before the dataset existed)."""
    kind = tree[0]
    if kind == "atom":
        lookup, raw = tree[1]
        return Q(**{name(lookup): value(raw)})
    if kind == "not":
        return ~to_q(tree[1], name=name, value=value)
    left, right = to_q(tree[1], name=name, value=value), to_q(tree[2], name=name, value=value)
    return left & right if kind == "and" else left | right
