"""What the lookup-index tests share: members saved on distinct shards."""

from __future__ import annotations

from django_shards import shard_for
from tests.testapp.models import Member


def members_on_distinct_shards(n: int, prefix: str = "m") -> list[Member]:
    """``n`` saved members (e-mail ``<prefix><i>@x.org``) whose keys land on ``n``
    different shards."""
    seen: set[str] = set()
    out: list[Member] = []
    i = 0
    while len(out) < n:
        m = Member(email=f"{prefix}{i}@x.org", handle=f"{prefix}{i}")
        i += 1
        name = shard_for(Member, m.pk).name
        if name not in seen:
            seen.add(name)
            m.save()
            out.append(m)
    return out
