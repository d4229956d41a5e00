"""Settings of the example project: a small social network sharded by author.

Two topologies, chosen by the environment (or ``example_project/.env``):

- ``DATABASE_URL`` unset: SQLite files under ``var/``. ``catalog.sqlite3`` is the default
  alias (auth, sessions, admin, the shard map); ``u0.sqlite3`` .. ``u3.sqlite3`` are the
  shards ``u0`` .. ``u3``, and each replica alias ``uN_r1`` reads its shard's file.
- ``DATABASE_URL`` set: the MariaDB topology, with the URLs that
  ``scripts/mariadb-topology env`` exports (``S0_URL``, ``S0_R1_URL``, ...): real primaries
  and GTID replicas, and ``SHARDS_OPERATOR_USER``/``SHARDS_OPERATOR_PASSWORD`` for
  ``DJANGO_SHARDS["OPERATOR"]``. ``mysqlclient`` and ``mysql-replication`` must be
  installed (``pip install -e ".[mysql]"``).

Either way ``u4`` (with ``u4_r1``) is a spare primary, in no group until a split uses it.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")  # the real environment wins over the file

SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-example-project-dev-only")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_shards",
    "social",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # read-your-writes across requests: a redirect after a POST reads the shard's primary
    "django_shards.middleware.PinningMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# -- databases ---------------------------------------------------------------------------

SHARDS = ["u0", "u1", "u2", "u3"]
SPARE_SHARDS = ["u4", "u5"]  # u4: for `shard_split ... --to u4`; u5: SPARES (shard_rebalance)

if env.str("DATABASE_URL", default=""):

    def _mariadb(var: str) -> dict:
        config = env.db(var)
        config.setdefault("OPTIONS", {}).update({"charset": "utf8mb4", "connect_timeout": 2})
        return config

    DATABASES = {"default": _mariadb("DATABASE_URL")}
    for i, alias in enumerate(SHARDS + SPARE_SHARDS):
        DATABASES[alias] = _mariadb(f"S{i}_URL")
        DATABASES[f"{alias}_r1"] = {**_mariadb(f"S{i}_R1_URL"), "TEST": {"MIRROR": alias}}
else:
    VAR_DIR.mkdir(exist_ok=True)  # SQLite creates files, not their directory

    def _sqlite(name: str) -> dict:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / f"{name}.sqlite3",
            "OPTIONS": {"timeout": 20},
        }

    DATABASES = {"default": _sqlite("catalog")}
    for alias in SHARDS + SPARE_SHARDS:
        DATABASES[alias] = _sqlite(alias)
        # the "replica" reads the same file: routing is real, replication is not
        DATABASES[f"{alias}_r1"] = {**_sqlite(alias), "TEST": {"MIRROR": alias}}

DATABASE_ROUTERS = ["django_shards.router.ShardRouter"]

DJANGO_SHARDS = {
    "GROUPS": {
        # authors, their posts and their follows, co-located by author
        "users": {
            "STRATEGY": "consistent_hash",
            "OPTIONS": {"vnodes": 256},
            "SHARDS": [
                {"NAME": alias, "PRIMARY": alias, "REPLICAS": [f"{alias}_r1"]} for alias in SHARDS
            ],
        },
    },
    # free databases for new shards: shard_rebalance splits a hot shard onto the next one
    "SPARES": [{"PRIMARY": "u5", "REPLICAS": ["u5_r1"]}],
    "CATALOG": "default",
    "READ_CONSISTENCY": "eventual",
    "PIN_AFTER_WRITE_SECONDS": 2.0,
}

# MariaDB: the operator account (the online split's binlog stream), from the environment
# that `scripts/mariadb-topology env` exports; never written in settings
if env.str("DATABASE_URL", default="") and env.str("SHARDS_OPERATOR_USER", default=""):
    DJANGO_SHARDS["OPERATOR"] = {
        "USER": env.str("SHARDS_OPERATOR_USER"),
        "PASSWORD": env.str("SHARDS_OPERATOR_PASSWORD", default=""),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- the rest is a plain Django project ----------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
