"""Settings of the lookup-index benchmark (``benchmarks/lookups.py``): N shards, primaries only.

The test app's models (``tests.testapp``; the benchmark reads ``Member``, whose manager is
``ShardedManager(key="id", lookups=["email", "handle"])``) on a topology of
its own, chosen by environment variables that the benchmark sets before Django starts:

- ``LOOKUP_BENCH_BACKEND``: ``sqlite`` (default) or ``mariadb``;
- ``LOOKUP_BENCH_SHARDS``: number of shard aliases ``l0`` .. ``l<N-1>`` (default 8);
- ``LOOKUP_BENCH_DIR``: SQLite only, the directory of the database files (required);
- ``SHARDS_TEST_SUFFIX``: MariaDB only, appended to the test database names.

MariaDB: the topology has fewer primary *servers* than N (``S0_URL`` .. ``S5_URL`` name
six databases on three servers), so ``l<i>`` is database ``lkshard<i>`` on the i-th server
modulo their number (:data:`PRIMARY_SERVERS`, the distinct host:port of ``S0_URL`` ..
``S5_URL`` in order). The catalog, which holds the lookup index (``LOOKUP_ALIAS`` not set),
is ``DATABASE_URL``. Django's test databases are named ``test_lookup_*`` (plus the suffix),
so the benchmark never touches the real databases, the test suite's ``test_*`` or the
other benchmarks'. No replicas: the benchmark reads with ``strong()``, every read goes to a
primary. ``CONN_MAX_AGE`` is 600 s on every alias, so the fan-out executor's threads keep
their connections (as in ``fanout_settings``).

Groups: ``users`` (Author, Post, Follow) and ``members`` (Member, Note; the test app moves
them from ``users`` to ``members``, so both are defined) are hashed over all N shards;
``metrics``, ``events``, ``legacy`` and ``ha`` live on the first shards only, so every
test-app model has a home.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import environ

from benchmarks.topology import mysql_database, primaries, sqlite_database

env = environ.Env()
BACKEND = env.str("LOOKUP_BENCH_BACKEND", default="sqlite")
SHARD_COUNT = env.int("LOOKUP_BENCH_SHARDS", default=8)
CONN_MAX_AGE = 600

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django_shards", "tests.testapp"]
DATABASE_ROUTERS = ["django_shards.router.ShardRouter"]
SHARD_ALIASES = [f"l{i}" for i in range(SHARD_COUNT)]
#: MariaDB: the distinct primary servers (host:port) the shard databases are spread over
PRIMARY_SERVERS: list[str] = []
#: alias -> where its database lives (host:port/name, or the SQLite file name)
PLACEMENT: dict[str, str] = {}

if BACKEND == "mariadb":
    _suffix = env.str("SHARDS_TEST_SUFFIX", default="")
    _server_urls: dict[str, str] = {}  # host:port -> the first S<i>_URL on it
    for _i in range(6):
        _url = os.environ.get(f"S{_i}_URL")
        if _url:
            _netloc = urlsplit(_url).netloc.rsplit("@", 1)[-1]
            _server_urls.setdefault(_netloc, f"S{_i}_URL")
    PRIMARY_SERVERS = list(_server_urls)

    def _mysql(var: str, name: str | None = None) -> dict:
        return mysql_database(
            env, var, prefix="test_lookup", conn_max_age=CONN_MAX_AGE, name=name, suffix=_suffix
        )

    DATABASES = {"default": _mysql("DATABASE_URL")}
    for _i, _alias in enumerate(SHARD_ALIASES):
        _server = PRIMARY_SERVERS[_i % len(PRIMARY_SERVERS)]
        DATABASES[_alias] = _mysql(_server_urls[_server], name=f"lkshard{_i}")
        PLACEMENT[_alias] = f"{_server}/{DATABASES[_alias]['TEST']['NAME']}"
    _catalog = urlsplit(os.environ["DATABASE_URL"]).netloc.rsplit("@", 1)[-1]
    PLACEMENT["default"] = f"{_catalog}/{DATABASES['default']['TEST']['NAME']}"
else:
    _dir = Path(os.environ["LOOKUP_BENCH_DIR"])

    def _sqlite(name: str) -> dict:
        return sqlite_database(_dir, name, prefix="test_lookup", conn_max_age=CONN_MAX_AGE)

    DATABASES = {"default": _sqlite("catalog")}
    for _alias in SHARD_ALIASES:
        DATABASES[_alias] = _sqlite(_alias)
        PLACEMENT[_alias] = f"test_lookup_{_alias}.sqlite3"
    PLACEMENT["default"] = "test_lookup_catalog.sqlite3"


DJANGO_SHARDS = {
    "GROUPS": {
        "users": {
            "STRATEGY": "consistent_hash",
            "OPTIONS": {"vnodes": 64},
            "SHARDS": primaries(SHARD_ALIASES),
        },
        "members": {
            "STRATEGY": "consistent_hash",
            "OPTIONS": {"vnodes": 64},
            "SHARDS": primaries(SHARD_ALIASES),
        },
        "metrics": {"STRATEGY": "hash", "SHARDS": primaries(SHARD_ALIASES[:2])},
        "events": {
            "STRATEGY": "range",
            "SHARDS": primaries(SHARD_ALIASES[:2], ranges=[[None, 1000], [1000, None]]),
        },
        "legacy": {"STRATEGY": "hash", "SHARDS": primaries(SHARD_ALIASES[:2])},
        "ha": {"STRATEGY": "range", "SHARDS": primaries(SHARD_ALIASES[:1], ranges=[[None, None]])},
    },
    "CATALOG": "default",
    "FANOUT": "allow",
    "FANOUT_WORKERS": 8,
    "FANOUT_TIMEOUT_SECONDS": 60.0,
}
