"""factory-boy factories for the test app's models."""

import factory

from django_shards import shard_for
from tests.testapp.models import Author, Event, Post, Reading


class AuthorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Author

    email = factory.Sequence(lambda n: f"author{n}@example.org")
    name = factory.Sequence(lambda n: f"Author {n}")
    score = factory.Sequence(lambda n: n % 7)


class PostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Post

    author = factory.SubFactory(AuthorFactory)
    title = factory.Sequence(lambda n: f"Post {n}")
    likes = factory.Sequence(lambda n: (n * 7) % 13)


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    account = factory.Sequence(lambda n: (n * 137) % 3000)
    kind = factory.Iterator(["open", "pay", "close"])
    amount = factory.Sequence(lambda n: n)


class ReadingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Reading

    sensor_id = factory.Sequence(lambda n: n)
    value = factory.Sequence(lambda n: n / 10)


def authors_on_distinct_shards(n: int = 2) -> list[Author]:
    """Saved authors whose ids land on ``n`` different shards."""
    seen, out = set(), []
    while len(out) < n:
        a = AuthorFactory()
        name = shard_for(Author, a.pk).name
        if name not in seen:
            seen.add(name)
            out.append(a)
    return out
