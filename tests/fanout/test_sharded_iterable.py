"""The sharded queryset's rows come back through an iterable class wrapping Django's own
(``values()``, ``values_list()``, an application's ``ModelIterable`` subclass), and a
sharded queryset survives pickling and deep copies (Django's cache pickles querysets)."""

import copy
import pickle

import pytest
from django.db.models.query import ModelIterable, ValuesIterable

from tests.factories import AuthorFactory
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(databases="__all__")


class TaggingIterable(ModelIterable):
    """What an application's iterable class (say django-model-utils') does: adjust rows."""

    def __iter__(self):
        for obj in super().__iter__():
            obj.tagged = True
            yield obj


@pytest.fixture
def authors():
    return [AuthorFactory() for _ in range(6)]


def test_a_pickled_fanout_queryset_unpickles_with_its_rows_and_still_routes(authors):
    restored = pickle.loads(pickle.dumps(Author.objects.all()))
    assert sorted(a.pk for a in restored) == sorted(a.pk for a in authors)
    assert [a.pk for a in restored.filter(pk=authors[0].pk)] == [authors[0].pk]
    values = pickle.loads(pickle.dumps(Author.objects.values("pk")))
    assert len(values) == len(authors)
    assert list(values.filter(pk=authors[1].pk)) == [{"pk": authors[1].pk}]


def test_a_for_key_queryset_survives_pickling(authors):
    pinned = Author.objects.for_key(authors[2].pk).filter(pk=authors[2].pk)
    assert [a.pk for a in pickle.loads(pickle.dumps(pinned))] == [authors[2].pk]


def test_a_deep_copied_queryset_routes_like_the_original(authors):
    copied = copy.deepcopy(Author.objects.filter(pk=authors[1].pk))
    assert [a.pk for a in copied] == [authors[1].pk]


def test_values_and_model_rows_keep_djangos_iterable_kinds():
    assert issubclass(Author.objects.all()._iterable_class, ModelIterable)
    assert issubclass(Author.objects.values("pk")._iterable_class, ValuesIterable)
    assert not issubclass(Author.objects.values("pk")._iterable_class, ModelIterable)


def test_an_applications_iterable_class_is_kept_on_one_shard_and_across_shards(authors):
    qs = Author.objects.all()
    qs._iterable_class = TaggingIterable
    rows = list(qs.all())  # a fan-out: every shard's rows pass through it
    assert len(rows) == len(authors) and all(r.tagged for r in rows)
    one = qs.filter(pk=authors[3].pk)
    assert [(r.pk, r.tagged) for r in one] == [(authors[3].pk, True)]
