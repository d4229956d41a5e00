"""factory-boy factories for the social models.

Deterministic for a given seed: call :func:`reseed` first. Snowflake ids are not part of
that (they come from the clock), so which shard an author lands on varies from run to run.
"""

import datetime

import factory
import factory.random
from django.utils.text import slugify

from social.models import Author, Follow, Post


def reseed(seed: int) -> None:
    """Make the factories' output (Faker text, dates, sequences) repeat for ``seed``."""
    factory.random.reseed_random(seed)
    for factory_class in (AuthorFactory, PostFactory, FollowFactory):
        factory_class.reset_sequence()


class AuthorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Author

    name = factory.Faker("name")
    handle = factory.LazyAttributeSequence(
        lambda o, n: f"{slugify(o.name).replace('-', '')[:30]}{n}"
    )
    email = factory.LazyAttribute(lambda o: f"{o.handle}@example.com")
    bio = factory.Faker("sentence", nb_words=12)
    joined = factory.Faker(
        "date_time_between", start_date="-2y", end_date="-1y", tzinfo=datetime.UTC
    )


class PostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Post

    author = factory.SubFactory(AuthorFactory)
    body = factory.Faker("paragraph", nb_sentences=3)
    created = factory.Faker("date_time_between", start_date="-1y", tzinfo=datetime.UTC)
    likes = factory.Faker("random_int", min=0, max=250)


class FollowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Follow

    follower = factory.SubFactory(AuthorFactory)
    followee = factory.SubFactory(AuthorFactory)
    created = factory.Faker("date_time_between", start_date="-1y", tzinfo=datetime.UTC)
