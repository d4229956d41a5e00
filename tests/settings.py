"""Settings of the test project.

SQLite by default (a catalog file and shard files, each shard with a replica alias that
reads the same file). With ``SHARDS_DB=mariadb`` the URLs come from the environment, as
written by ``scripts/mariadb-topology env``: primaries with real GTID replicas.
"""

import os
import tempfile
from pathlib import Path

import environ

env = environ.Env()
SHARDS_DB = env.str("SHARDS_DB", default="sqlite")
SHARD_COUNT = 6  # s0..s3 serve the groups; s4, s5 are spare primaries for splits

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.urls"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_shards",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_shards.middleware.PinningMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASE_ROUTERS = ["django_shards.router.ShardRouter"]

if SHARDS_DB == "mariadb":
    # SHARDS_TEST_SUFFIX keeps concurrent runs on one topology apart (test_shard0_<suffix>)
    _suffix = env.str("SHARDS_TEST_SUFFIX", default="")

    def _mysql(var):
        cfg = env.db(var)
        cfg.setdefault("OPTIONS", {}).update({"charset": "utf8mb4", "connect_timeout": 2})
        if _suffix:
            cfg["TEST"] = {"NAME": f"test_{cfg['NAME']}_{_suffix}"}
        return cfg

    DATABASES = {"default": _mysql("DATABASE_URL")}
    for i in range(SHARD_COUNT):
        DATABASES[f"s{i}"] = _mysql(f"S{i}_URL")
        DATABASES[f"s{i}_r1"] = {**_mysql(f"S{i}_R1_URL"), "TEST": {"MIRROR": f"s{i}"}}
else:
    _dir = Path(os.environ.get("SHARDS_SQLITE_DIR") or tempfile.mkdtemp(prefix="shards-tests-"))

    def _sqlite(name):
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(_dir / f"{name}.sqlite3"),
            "TEST": {"NAME": str(_dir / f"test_{name}.sqlite3")},
            "OPTIONS": {"timeout": 20},
        }

    DATABASES = {"default": _sqlite("catalog")}
    for i in range(SHARD_COUNT):
        DATABASES[f"s{i}"] = _sqlite(f"s{i}")
        DATABASES[f"s{i}_r1"] = {**_sqlite(f"s{i}"), "TEST": {"MIRROR": f"s{i}"}}


# A subprocess started by a test (a split killed with SIGKILL, a "fresh process") must see
# the test run's databases: SHARDS_USE_TEST_DATABASES=1 makes each alias use its test
# database as its real one (pass SHARDS_SQLITE_DIR / SHARDS_TEST_SUFFIX along as well).
if env.bool("SHARDS_USE_TEST_DATABASES", default=False):
    for _alias, _cfg in DATABASES.items():
        _test = _cfg.get("TEST", {})
        if "MIRROR" in _test:
            _cfg["NAME"] = DATABASES[_test["MIRROR"]]["NAME"]
            _cfg["TEST"] = {"MIRROR": _test["MIRROR"]}  # still says which primary it copies
        else:
            _cfg["NAME"] = _test.get("NAME") or f"test_{_cfg['NAME']}"
            _cfg["TEST"] = {}
    for _alias, _cfg in DATABASES.items():  # mirrors again, now that primaries are renamed
        if _alias.endswith("_r1"):
            _cfg["NAME"] = DATABASES[_alias[: -len("_r1")]]["NAME"]


def _shards(*indexes, ranges=None):
    out = []
    for n, i in enumerate(indexes):
        shard = {"NAME": f"s{i}", "PRIMARY": f"s{i}", "REPLICAS": [f"s{i}_r1"]}
        if ranges:
            shard["RANGE"] = ranges[n]
        out.append(shard)
    return out


DJANGO_SHARDS = {
    "GROUPS": {
        # authors, their posts and follows: co-located by author
        "users": {
            "STRATEGY": "consistent_hash",
            "OPTIONS": {"vnodes": 64},
            "SHARDS": _shards(0, 1, 2, 3),
        },
        # events by account number: range scans prune
        "events": {
            "STRATEGY": "range",
            "SHARDS": _shards(0, 1, 2, ranges=[[None, 1000], [1000, 2000], [2000, None]]),
        },
        # sensor readings by sensor id: even spread
        "metrics": {"STRATEGY": "hash", "SHARDS": _shards(0, 1, 2, 3)},
        # legacy codes: the naive scheme
        "legacy": {"STRATEGY": "modulo", "SHARDS": _shards(0, 1)},
    },
    "CATALOG": "default",
    "PIN_AFTER_WRITE_SECONDS": 2.0,
    "MAP_LEASE_SECONDS": 1.0,
}

# the operator account of the topology (binlog streams of the online split), from its env
# file; the topology has no separate replication account for the app to use
if SHARDS_DB == "mariadb" and env.str("SHARDS_OPERATOR_USER", default=""):
    DJANGO_SHARDS["OPERATOR"] = {
        "USER": env.str("SHARDS_OPERATOR_USER"),
        "PASSWORD": env.str("SHARDS_OPERATOR_PASSWORD", default=""),
    }

STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
