"""Settings of the test project.

SQLite by default (a catalog file and shard files, each shard with a replica alias that
reads the same file). With ``SHARDS_DB=mariadb`` the URLs come from the environment, as
written by ``scripts/mariadb-topology env``: primaries with real GTID replicas, and the HA
trio for failover (``h0`` on f0, with its semi-synchronous replicas ``h0_r1``, ``h0_r2``).
"""

import os
import tempfile
from pathlib import Path

import environ

env = environ.Env()
SHARDS_DB = env.str("SHARDS_DB", default="sqlite")
SHARD_COUNT = 6  # s0..s3 serve the groups; s4, s5 are spare primaries for splits
HA_REPLICAS = ("h0_r1", "h0_r2")  # h0's replicas (the topology's f1, f2; f0 is h0)

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
    DATABASES["h0"] = _mysql("HA_URL")
    for _n, _alias in enumerate(HA_REPLICAS, start=1):
        DATABASES[_alias] = {**_mysql(f"HA_R{_n}_URL"), "TEST": {"MIRROR": "h0"}}
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
    DATABASES["h0"] = _sqlite("h0")
    for _alias in HA_REPLICAS:
        DATABASES[_alias] = {**_sqlite("h0"), "TEST": {"MIRROR": "h0"}}


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
        if "MIRROR" in _cfg["TEST"]:
            _cfg["NAME"] = DATABASES[_cfg["TEST"]["MIRROR"]]["NAME"]


def _shard(name, replicas, rng=None):
    shard = {"NAME": name, "PRIMARY": name, "REPLICAS": list(replicas)}
    if rng is not None:
        shard["RANGE"] = rng
    return shard


def _shards(*indexes, ranges=None):
    return [
        _shard(f"s{i}", [f"s{i}_r1"], ranges[n] if ranges else None) for n, i in enumerate(indexes)
    ]


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
        # members found by e-mail or handle: lookup indexes (tests/lookups)
        "members": {"STRATEGY": "hash", "SHARDS": _shards(0, 1, 2, 3)},
        # legacy codes: the naive scheme
        "legacy": {"STRATEGY": "modulo", "SHARDS": _shards(0, 1)},
        # deposits by account: one shard, every key, on the HA trio (failover and switchover)
        "ha": {
            "STRATEGY": "range",
            "SHARDS": [_shard("h0", HA_REPLICAS, [None, None])],
        },
    },
    "CATALOG": "default",
    "PIN_AFTER_WRITE_SECONDS": 2.0,
    "MAP_LEASE_SECONDS": 1.0,
    # no load written in the background: the tests flush it themselves (load.flush())
    "LOAD_FLUSH_SECONDS": 3600,
    # shard_rebalance splits onto s4 (a split target of the split tests too: no group's shard)
    "SPARES": [{"PRIMARY": "s4", "REPLICAS": ["s4_r1"]}],
}

# the operator account of the topology (binlog streams of the online split, promotion), and
# its replication account (replicas repointed by a failover), from its env file
if SHARDS_DB == "mariadb" and env.str("SHARDS_OPERATOR_USER", default=""):
    _operator = {
        "USER": env.str("SHARDS_OPERATOR_USER"),
        "PASSWORD": env.str("SHARDS_OPERATOR_PASSWORD", default=""),
    }
    if env.str("SHARDS_REPLICATION_USER", default=""):
        _operator["REPLICATION_USER"] = env.str("SHARDS_REPLICATION_USER")
        _operator["REPLICATION_PASSWORD"] = env.str("SHARDS_REPLICATION_PASSWORD", default="")
    DJANGO_SHARDS["OPERATOR"] = _operator

STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
