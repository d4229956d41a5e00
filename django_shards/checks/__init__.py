"""System checks: every configuration check of django_shards, in this package.

- :mod:`.settings` (tag ``django_shards``): ``DJANGO_SHARDS`` and ``DATABASES``, through
  :mod:`.groups` (groups, shards, strategies), :mod:`.databases` (aliases, router) and
  :mod:`.operator` (``OPERATOR``, E016);
- :mod:`.spares` (tag ``django_shards``): ``SPARES`` (E017);
- :mod:`.lookups`: ``LOOKUP_ALIAS`` (E042, W005) and ``lookups=[...]`` (E040, E041, E043);
- :mod:`.models` (tag ``models``): sharded models and relations across databases;
- :mod:`.catalog` (tag ``database``): E030, E031, the only checks that read a database.

Importing this package registers them. Every id is documented in ``docs/checks.md``, online
at :data:`DOCS_URL`, which each message's hint links to; strategies add their own
(``E020``-``E025``, ``W020``) through ``Strategy.check``.
"""

from django_shards.checks.catalog import check_catalog_agrees
from django_shards.checks.lookups import check_lookup_alias, check_lookups
from django_shards.checks.messages import DOCS_URL, TAG, docs_link
from django_shards.checks.models import _check_many_to_many as _check_many_to_many
from django_shards.checks.models import check_models
from django_shards.checks.settings import check_settings
from django_shards.checks.spares import check_spares

__all__ = [
    "DOCS_URL",
    "TAG",
    "check_catalog_agrees",
    "check_lookup_alias",
    "check_lookups",
    "check_models",
    "check_settings",
    "check_spares",
    "docs_link",
]
