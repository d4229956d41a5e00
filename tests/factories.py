import factory

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
