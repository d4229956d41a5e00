"""System checks: each bad configuration is reported by its id, never by a traceback."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps.registry import Apps
from django.core.checks import CheckMessage, Error
from django.core.management import call_command
from django.db import models
from django.test import override_settings
from django.test.utils import isolate_apps
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_shards import checks, conf, keys
from django_shards.strategies.base import Strategy

pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")

ROUTER = "django_shards.router.ShardRouter"


def database(name: str, mirror: str | None = None, engine: str = "sqlite3") -> dict[str, Any]:
    db: dict[str, Any] = {"ENGINE": f"django.db.backends.{engine}", "NAME": f"{name}.sqlite3"}
    if mirror:
        db["TEST"] = {"MIRROR": mirror}
    return db


def valid_databases() -> dict[str, Any]:
    return {
        "default": database("catalog"),
        "a0": database("a0"),
        "a0_r1": database("a0", mirror="a0"),
        "a1": database("a1"),
        "a1_r1": database("a1", mirror="a1"),
    }


def shard(name: str, **extra: Any) -> dict[str, Any]:
    return {"NAME": name, "PRIMARY": name, "REPLICAS": [f"{name}_r1"], **extra}


def valid_shards() -> dict[str, Any]:
    """Two groups on the same two primaries: a correct configuration."""
    return {
        "GROUPS": {
            "users": {
                "STRATEGY": "consistent_hash",
                "OPTIONS": {"vnodes": 16},
                "SHARDS": [shard("a0"), shard("a1")],
            },
            "events": {
                "STRATEGY": "range",
                "SHARDS": [shard("a0", RANGE=[None, 100]), shard("a1", RANGE=[100, None])],
            },
        },
        "CATALOG": "default",
        "READ_YOUR_WRITES": "time",
    }


def settings_messages(
    shards: Any = None, databases: dict[str, Any] | None = None, **other: Any
) -> list[CheckMessage]:
    """The settings checks' messages under the given (default: valid) configuration."""
    with override_settings(
        DJANGO_SHARDS=valid_shards() if shards is None else shards,
        DATABASES=valid_databases() if databases is None else databases,
        DATABASE_ROUTERS=other.pop("routers", [ROUTER]),
        **other,
    ):
        return checks.check_settings()


def ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id for m in messages]


def broken(**changes: Any) -> dict[str, Any]:
    return {**valid_shards(), **changes}


def with_group(name: str, group: Any) -> dict[str, Any]:
    config = valid_shards()
    config["GROUPS"][name] = group
    return config


# -- settings ----------------------------------------------------------------------------


def test_valid_configuration_yields_no_messages() -> None:
    assert settings_messages() == []


def test_unset_setting_yields_no_messages() -> None:
    with override_settings(DJANGO_SHARDS=None):
        assert checks.check_settings() == []


def test_every_message_has_a_hint_pointing_at_its_docs_anchor() -> None:
    config = broken(FANOUT="never", CATALOG="nope", TYPO=1)
    config["GROUPS"]["users"]["SHARDS"][0]["PRIMARY"] = "missing"
    messages = settings_messages(config)
    assert {"django_shards.E009", "django_shards.E008", "django_shards.W001"} <= set(ids(messages))
    for message in messages:
        code = message.id.removeprefix("django_shards.").lower()
        assert message.hint.endswith(f"See {checks.DOCS_URL}checks/#{code}"), message


@pytest.mark.parametrize("value", [["GROUPS"], "GROUPS", 3])
def test_setting_that_is_not_a_dict_is_reported_as_e001_alone(value: Any) -> None:
    messages = settings_messages(value)
    assert ids(messages) == ["django_shards.E001"]
    assert settings_messages() == []


def test_misspelled_top_level_key_is_reported_as_w001_with_a_suggestion() -> None:
    messages = settings_messages(broken(CATALOGUE="default"))
    assert ids(messages) == ["django_shards.W001"]
    assert "'CATALOGUE'" in messages[0].msg and "did you mean 'CATALOG'" in messages[0].msg
    assert "READ_CONSISTENCY" in messages[0].hint  # names the known keys
    assert settings_messages() == []


@pytest.mark.parametrize(
    "config",
    [
        broken(GROUPS=[{"SHARDS": []}]),
        with_group("bad", ["a0"]),
        with_group("bad", {"STRATEGY": "hash"}),
        with_group("bad", {"STRATEGY": "hash", "SHARDS": []}),
        with_group("bad", {"STRATEGY": "hash", "SHARDS": shard("a0")}),
        with_group("bad", {"STRATEGY": "hash", "SHARDS": ["a0"]}),
        with_group("bad", {"STRATEGY": "hash", "SHARDS": [{"PRIMARY": "a0"}]}),
        with_group("bad", {"STRATEGY": "hash", "SHARDS": [{"NAME": "a0"}]}),
        with_group("bad", {"STRATEGY": "hash", "SHARDS": [shard("a0", REPLICAS="a0_r1")]}),
        with_group("bad", {"STRATEGY": "hash", "SHARDS": [shard("a0", REPLICAS=[None])]}),
        with_group("bad", {"STRATEGY": "hash", "OPTIONS": [1], "SHARDS": [shard("a0")]}),
        with_group(7, {"STRATEGY": "hash", "SHARDS": [shard("a0")]}),
    ],
)
def test_malformed_group_is_reported_as_e002(config: dict[str, Any]) -> None:
    assert "django_shards.E002" in ids(settings_messages(config))
    assert settings_messages() == []


def test_replicas_given_as_a_string_is_reported_as_e002_naming_the_shard() -> None:
    config = with_group("bad", {"STRATEGY": "hash", "SHARDS": [shard("a0", REPLICAS="a0_r1")]})
    (message,) = [m for m in settings_messages(config) if m.id == "django_shards.E002"]
    assert "REPLICAS of SHARDS[0] of group 'bad'" in message.msg
    assert message.obj == "DJANGO_SHARDS['GROUPS']['bad']"


def test_e002_hint_names_the_users_own_replica_alias() -> None:
    users = {"STRATEGY": "hash", "SHARDS": [shard("u0", PRIMARY="a0", REPLICAS="u0_r1")]}
    (message,) = [
        m for m in settings_messages(with_group("bad", users)) if m.id == "django_shards.E002"
    ]
    assert "['u0_r1']" in message.hint
    assert "s0_r1" not in message.hint


def test_a_shard_listing_its_primary_as_replica_gets_no_self_mirror_hint() -> None:
    config = valid_shards()
    config["GROUPS"]["users"]["SHARDS"][0]["REPLICAS"] = ["a0"]
    messages = settings_messages(config)
    assert "django_shards.E006" in ids(messages)
    assert not any("\"MIRROR\": 'a0'}" in (m.hint or "") and "a0" in m.msg for m in messages)
    assert not [m for m in messages if m.id == "django_shards.E007" and "'a0' of" in m.msg]


class QuietStrategy(Strategy):
    """A custom strategy whose check finds nothing (never instantiated by the checks)."""


class ComplainingStrategy(Strategy):
    @classmethod
    def check(cls, group: conf.GroupSettings) -> list[CheckMessage]:
        return [Error(f"{group.name} has {len(group.shards)} shards", id="tests.E999")]


class CrashingStrategy(Strategy):
    @classmethod
    def check(cls, group: conf.GroupSettings) -> list[CheckMessage]:
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "strategy",
    ["modular", "no.such.module.Strategy", "nodots", "tests.checks.test_checks.ids", "", 5, None],
)
def test_unknown_strategy_is_reported_as_e003(strategy: Any) -> None:
    config = valid_shards()
    config["GROUPS"]["users"]["STRATEGY"] = strategy
    messages = settings_messages(config)
    assert ids(messages) == ["django_shards.E003"]
    assert "group 'users'" in messages[0].msg
    assert settings_messages() == []


@pytest.mark.parametrize(
    "strategy", [*conf.BUILTIN_STRATEGIES, "tests.checks.test_checks.QuietStrategy"]
)
def test_builtin_names_and_custom_strategy_paths_are_accepted(strategy: str) -> None:
    config = valid_shards()
    config["GROUPS"]["users"]["STRATEGY"] = strategy
    config["GROUPS"]["users"]["OPTIONS"] = {}
    assert "django_shards.E003" not in ids(settings_messages(config))


def test_strategy_check_messages_are_included() -> None:
    config = valid_shards()
    config["GROUPS"]["users"]["STRATEGY"] = "tests.checks.test_checks.ComplainingStrategy"
    messages = settings_messages(config)
    assert ids(messages) == ["tests.E999"]
    assert messages[0].msg == "users has 2 shards"


def test_builtin_strategy_check_runs_for_its_group() -> None:
    config = valid_shards()
    config["GROUPS"]["events"]["SHARDS"][1]["RANGE"] = [150, None]  # a gap [100, 150)
    assert any(i.startswith("django_shards.E02") for i in ids(settings_messages(config)))


def test_custom_strategy_check_that_raises_is_reported_as_e003() -> None:
    config = valid_shards()
    config["GROUPS"]["users"]["STRATEGY"] = "tests.checks.test_checks.CrashingStrategy"
    messages = settings_messages(config)
    assert ids(messages) == ["django_shards.E003"]
    assert "RuntimeError('boom')" in messages[0].msg
    assert settings_messages() == []


def test_replica_alias_missing_from_databases_is_reported_as_e004() -> None:
    databases = valid_databases()
    del databases["a1_r1"]
    messages = settings_messages(databases=databases)
    assert ids(messages) == ["django_shards.E004"]  # once, naming both groups that use it
    assert "'a1_r1' (REPLICAS of shard 'a1' of group 'users'; REPLICAS of shard 'a1' of group" in (
        messages[0].msg
    )
    assert settings_messages() == []


def test_primary_alias_missing_from_databases_is_reported_as_e004_with_a_suggestion() -> None:
    config = with_group("extra", {"STRATEGY": "hash", "SHARDS": [{"NAME": "x", "PRIMARY": "a_1"}]})
    messages = settings_messages(config)
    assert ids(messages) == ["django_shards.E004"]
    assert "'a_1' (PRIMARY of shard 'x' of group 'extra')" in messages[0].msg
    assert "did you mean 'a1'" in messages[0].msg
    assert settings_messages() == []


def test_duplicate_shard_name_in_a_group_is_reported_as_e005() -> None:
    databases = {**valid_databases(), "a2": database("a2")}
    config = valid_shards()
    config["GROUPS"]["users"]["SHARDS"].append({"NAME": "a0", "PRIMARY": "a2"})
    messages = settings_messages(config, databases)
    assert ids(messages) == ["django_shards.E005"]
    assert "'a0' appears twice in group 'users'" in messages[0].msg
    assert settings_messages() == []


def test_alias_shared_by_two_shards_of_a_group_is_reported_as_e005() -> None:
    config = valid_shards()
    config["GROUPS"]["users"]["SHARDS"].append({"NAME": "a2", "PRIMARY": "a1"})
    messages = settings_messages(config)
    assert ids(messages) == ["django_shards.E005"]
    assert "'a1' is used by shards 'a1' and 'a2' of group 'users'" in messages[0].msg
    assert settings_messages() == []


def test_alias_that_is_a_replica_and_a_primary_is_reported_as_e006() -> None:
    config = valid_shards()
    config["GROUPS"]["extra"] = {
        "STRATEGY": "hash",
        "SHARDS": [{"NAME": "x0", "PRIMARY": "a0_r1"}],  # a replica of group users
    }
    messages = settings_messages(config)
    assert ids(messages) == ["django_shards.E006"]
    assert "'a0_r1' is a replica" in messages[0].msg and "group 'extra'" in messages[0].msg
    assert settings_messages() == []


def test_replica_without_test_mirror_is_reported_as_e007() -> None:
    databases = valid_databases()
    del databases["a0_r1"]["TEST"]
    messages = settings_messages(databases=databases)
    assert ids(messages) == ["django_shards.E007"]
    assert "Replica 'a0_r1' of shard 'a0' of group 'users'" in messages[0].msg
    assert settings_messages() == []


def test_replica_mirroring_another_alias_is_reported_as_e007() -> None:
    databases = valid_databases()
    databases["a0_r1"]["TEST"]["MIRROR"] = "a1"
    messages = settings_messages(databases=databases)
    assert ids(messages) == ["django_shards.E007"]
    assert "mirrors 'a1', not its shard's primary 'a0'" in messages[0].msg
    assert settings_messages() == []


@pytest.mark.parametrize("catalog", ["catalogue", "a0_r1", None, 0])
def test_catalog_that_is_unknown_or_a_replica_is_reported_as_e008(catalog: Any) -> None:
    assert ids(settings_messages(broken(CATALOG=catalog))) == ["django_shards.E008"]
    assert settings_messages() == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("READ_CONSISTENCY", "strict"),
        ("READ_YOUR_WRITES", "GTID"),
        ("REPLICA_SELECTION", "least_lag"),
        ("FANOUT", True),
        ("FANOUT", ["deny"]),
    ],
)
def test_value_outside_the_allowed_choices_is_reported_as_e009(key: str, value: Any) -> None:
    messages = settings_messages(broken(**{key: value}))
    assert ids(messages) == ["django_shards.E009"]
    assert key in messages[0].msg
    assert settings_messages() == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("PIN_AFTER_WRITE_SECONDS", -1),
        ("PIN_AFTER_WRITE_SECONDS", "2"),
        ("MAX_REPLICA_LAG_SECONDS", 0),
        ("FANOUT_TIMEOUT_SECONDS", None),
        ("MAP_LEASE_SECONDS", float("nan")),
        ("FANOUT_WORKERS", 0),
        ("FANOUT_WORKERS", 2.0),
        ("FANOUT_WORKERS", True),
        ("NODE_ID", 1024),
        ("NODE_ID", -1),
        ("NODE_ID", "7"),
    ],
)
def test_bad_number_is_reported_as_e010(key: str, value: Any) -> None:
    messages = settings_messages(broken(**{key: value}))
    assert ids(messages) == ["django_shards.E010"]
    assert key in messages[0].msg
    assert settings_messages() == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("PIN_AFTER_WRITE_SECONDS", 0),
        ("MAX_REPLICA_LAG_SECONDS", 1),
        ("FANOUT_WORKERS", 1),
        ("NODE_ID", 0),
        ("NODE_ID", 1023),
    ],
)
def test_boundary_numbers_are_accepted(key: str, value: Any) -> None:
    assert settings_messages(broken(**{key: value})) == []


def test_missing_shard_router_is_reported_as_w002() -> None:
    messages = settings_messages(routers=[])
    assert ids(messages) == ["django_shards.W002"]
    assert settings_messages(routers=[]) and settings_messages(broken(GROUPS={}), routers=[]) == []
    assert settings_messages() == []


def test_shard_router_given_as_a_class_or_an_instance_satisfies_w002() -> None:
    from django_shards.router import ShardRouter

    assert settings_messages(routers=[ShardRouter]) == []
    assert settings_messages(routers=[ShardRouter()]) == []


def test_gtid_with_non_mysql_replicas_is_reported_as_w003() -> None:
    messages = settings_messages(broken(READ_YOUR_WRITES="gtid"))
    assert ids(messages) == ["django_shards.W003"]
    assert "'a0_r1', 'a1_r1'" in messages[0].msg
    databases = valid_databases()
    for alias in ("a0_r1", "a1_r1"):
        databases[alias]["ENGINE"] = "django.db.backends.mysql"
    assert settings_messages(broken(READ_YOUR_WRITES="gtid"), databases) == []


# Anything at all in DJANGO_SHARDS: messages, never a traceback.
_WORDS = ["", "a0", "a0_r1", "default", "hash", "range", "modulo", "x.y.Z", "gtid", "deny"]
_atoms = st.none() | st.booleans() | st.integers(-5, 2000) | st.floats() | st.sampled_from(_WORDS)
_values = st.recursive(
    _atoms,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["NAME", "PRIMARY", "vnodes", "lo"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_shard = st.fixed_dictionaries(
    {}, optional={k: _values for k in ("NAME", "PRIMARY", "REPLICAS", "RANGE")}
) | st.fixed_dictionaries(
    {"NAME": st.sampled_from(["a0", "a1"]), "PRIMARY": st.sampled_from(["a0", "a1", "a0_r1"])},
    optional={
        "REPLICAS": st.lists(st.sampled_from(["a0_r1", "a1_r1", "a0"]), max_size=2),
        "RANGE": st.lists(_atoms, max_size=3),
    },
)
_group = (
    st.fixed_dictionaries(
        {},
        optional={
            "STRATEGY": st.sampled_from([*conf.BUILTIN_STRATEGIES, "nope"]) | _atoms,
            "OPTIONS": st.dictionaries(st.sampled_from(["vnodes", "x"]), _values, max_size=2)
            | _values,
            "SHARDS": st.lists(_shard, max_size=3) | _values,
        },
    )
    | _values
)
_anything = (
    st.fixed_dictionaries(
        {},
        optional={
            "GROUPS": st.dictionaries(st.sampled_from(["users", "events"]), _group, max_size=2)
            | _values,
            **{key: _values for key in conf.DEFAULTS if key != "GROUPS"},
            "TYPO": _values,
        },
    )
    | _values
)


@hypothesis_settings(
    max_examples=300, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(config=_anything)
def test_any_setting_yields_messages_never_a_traceback(config: Any) -> None:
    messages = settings_messages(copy.deepcopy(config))
    assert all(isinstance(m, CheckMessage) for m in messages)
    assert not any("raised" in m.msg for m in messages if m.id == "django_shards.E003"), messages


# -- models ------------------------------------------------------------------------------


@pytest.fixture
def isolated() -> Iterator[Apps]:
    """A private app registry for tests.testapp; its sharded models are forgotten after."""
    saved = dict(keys._registry)
    try:
        with isolate_apps("tests.testapp") as apps:
            yield apps
    finally:
        keys._registry.clear()
        keys._registry.update(saved)


def model_messages(apps: Apps, shards: dict[str, Any] | None = None) -> list[CheckMessage]:
    with override_settings(DJANGO_SHARDS=valid_shards() if shards is None else shards):
        return checks.check_models(app_configs=apps.get_app_configs())


def declare_author(sharded: bool = True) -> type[models.Model]:
    from django_shards.ids import SnowflakeField
    from django_shards.manager import ShardedManager

    attrs: dict[str, Any] = {
        "__module__": __name__,
        "Meta": type("Meta", (), {"app_label": "testapp"}),
        "id": SnowflakeField(primary_key=True),
        "email": models.EmailField(),
    }
    if sharded:
        attrs["objects"] = ShardedManager(group="users", key="id")
    return type("Author", (models.Model,), attrs)


def test_valid_sharded_models_yield_no_messages(isolated: Apps) -> None:
    from django_shards.ids import SnowflakeField
    from django_shards.manager import ShardedManager

    Author = declare_author()

    class Post(models.Model):
        id = SnowflakeField(primary_key=True)
        author = models.ForeignKey(Author, on_delete=models.CASCADE)
        objects = ShardedManager(group="users", key="author")

        class Meta:
            app_label = "testapp"

    class Event(models.Model):
        account = models.IntegerField()
        author = models.ForeignKey(Author, on_delete=models.CASCADE, db_constraint=False)
        objects = ShardedManager(group="events", key="account")

        class Meta:
            app_label = "testapp"

    class Profile(models.Model):  # unsharded, on the catalog database
        author = models.OneToOneField(Author, on_delete=models.CASCADE, db_constraint=False)

        class Meta:
            app_label = "testapp"

    assert model_messages(isolated) == []


def test_model_in_unknown_group_is_reported_as_e011(isolated: Apps) -> None:
    from django_shards.ids import SnowflakeField
    from django_shards.manager import ShardedManager

    class Reading(models.Model):
        id = SnowflakeField(primary_key=True)
        objects = ShardedManager(group="user", key="id")

        class Meta:
            app_label = "testapp"

    messages = model_messages(isolated)
    assert ids(messages) == ["django_shards.E011"]
    assert messages[0].obj is Reading
    assert "group 'user'" in messages[0].msg and "did you mean 'users'" in messages[0].msg
    config = valid_shards()
    config["GROUPS"]["user"] = config["GROUPS"]["users"]
    assert model_messages(isolated, config) == []


def test_missing_shard_key_field_is_reported_as_e012(isolated: Apps) -> None:
    from django_shards.ids import SnowflakeField
    from django_shards.manager import ShardedManager

    class Reading(models.Model):
        id = SnowflakeField(primary_key=True)
        sensor = models.IntegerField()
        objects = ShardedManager(group="users", key="sensr")

        class Meta:
            app_label = "testapp"

    messages = model_messages(isolated)
    assert ids(messages) == ["django_shards.E012"]
    assert "'sensr' of testapp.Reading" in messages[0].msg and "'sensor'" in messages[0].msg


def test_many_to_many_shard_key_is_reported_as_e012(isolated: Apps) -> None:
    from django_shards.ids import SnowflakeField
    from django_shards.manager import ShardedManager

    class Tag(models.Model):
        class Meta:
            app_label = "testapp"

    class Reading(models.Model):
        id = SnowflakeField(primary_key=True)
        tags = models.ManyToManyField(Tag)
        objects = ShardedManager(group="users", key="tags")

        class Meta:
            app_label = "testapp"

    assert ids(model_messages(isolated)) == ["django_shards.E012", "django_shards.E015"]


@pytest.mark.parametrize("auto", [models.AutoField, models.BigAutoField, models.SmallAutoField])
def test_auto_incremented_shard_key_is_reported_as_e013(isolated: Apps, auto: type) -> None:
    from django_shards.manager import ShardedManager

    class Reading(models.Model):
        id = auto(primary_key=True)
        objects = ShardedManager(group="users", key="pk")

        class Meta:
            app_label = "testapp"

    messages = model_messages(isolated)
    assert ids(messages) == ["django_shards.E013"]
    assert "SnowflakeField" in messages[0].hint


def test_foreign_key_across_groups_is_reported_as_e014(isolated: Apps) -> None:
    from django_shards.manager import ShardedManager

    Author = declare_author()

    class Event(models.Model):
        account = models.IntegerField()
        author = models.ForeignKey(Author, on_delete=models.CASCADE)
        objects = ShardedManager(group="events", key="account")

        class Meta:
            app_label = "testapp"

    messages = model_messages(isolated)
    assert ids(messages) == ["django_shards.E014"]
    assert messages[0].obj is Event._meta.get_field("author")
    assert "testapp.Event (in group 'events')" in messages[0].msg
    assert "testapp.Author (in group 'users')" in messages[0].msg


def test_foreign_key_from_unsharded_to_sharded_model_is_reported_as_e014(isolated: Apps) -> None:
    Author = declare_author()

    class Profile(models.Model):
        author = models.OneToOneField(Author, on_delete=models.CASCADE)

        class Meta:
            app_label = "testapp"

    messages = model_messages(isolated)
    assert ids(messages) == ["django_shards.E014"]
    assert "testapp.Profile (unsharded)" in messages[0].msg


def test_foreign_key_from_sharded_to_unsharded_model_is_reported_as_e014(isolated: Apps) -> None:
    from django_shards.ids import SnowflakeField
    from django_shards.manager import ShardedManager

    class Country(models.Model):
        class Meta:
            app_label = "testapp"

    class Reading(models.Model):
        id = SnowflakeField(primary_key=True)
        country = models.ForeignKey(Country, on_delete=models.PROTECT)
        objects = ShardedManager(group="users", key="id")

        class Meta:
            app_label = "testapp"

    assert ids(model_messages(isolated)) == ["django_shards.E014"]


def test_foreign_keys_between_unsharded_models_are_fine(isolated: Apps) -> None:
    declare_author(sharded=False)

    class Country(models.Model):
        class Meta:
            app_label = "testapp"

    class City(models.Model):
        country = models.ForeignKey(Country, on_delete=models.CASCADE)

        class Meta:
            app_label = "testapp"

    assert model_messages(isolated) == []


def test_model_checks_skip_apps_that_were_not_asked_for(isolated: Apps) -> None:
    from django.apps import apps as global_apps

    from django_shards.manager import ShardedManager

    class Reading(models.Model):
        objects = ShardedManager(group="nope", key="missing")

        class Meta:
            app_label = "testapp"

    assert len(model_messages(isolated)) == 2  # E011 and E012
    with override_settings(DJANGO_SHARDS=valid_shards()):
        assert checks.check_models(app_configs=[global_apps.get_app_config("auth")]) == []


def test_model_checks_with_malformed_settings_report_no_unknown_group(isolated: Apps) -> None:
    declare_author()
    assert model_messages(isolated, {"GROUPS": ["users"]}) == []


# -- the whole project -------------------------------------------------------------------


@pytest.mark.django_db(databases="__all__")  # Django 6.1 runs database checks too
def test_manage_py_check_passes_on_the_test_settings() -> None:
    call_command("check", fail_level="ERROR")  # raises SystemCheckError on any error


# -- added: unknown keys inside groups and shards, auto-created many-to-many tables ------


def test_misspelled_key_inside_a_shard_is_reported_as_w004() -> None:
    from django.conf import settings

    groups = {
        "g": {
            "STRATEGY": "hash",
            "SHARDS": [{"NAME": "s0", "PRIMARY": "s0", "REPLICA": ["s0_r1"]}],
            "OPTONS": {},
        }
    }
    with override_settings(DJANGO_SHARDS={**settings.DJANGO_SHARDS, "GROUPS": groups}):
        messages = [m for m in checks.check_settings() if m.id == "django_shards.W004"]
    text = " ".join(m.msg for m in messages)
    assert len(messages) == 2
    assert "'REPLICA'" in text and "'OPTONS'" in text


def test_auto_created_many_to_many_on_a_sharded_model_is_reported_as_e015(
    isolated: Apps,
) -> None:
    from django_shards.manager import ShardedManager

    class Label(models.Model):
        name = models.CharField(max_length=10)

        class Meta:
            app_label = "testapp"

    class Doc(models.Model):
        id = models.BigIntegerField(primary_key=True)
        labels = models.ManyToManyField(Label)
        objects = ShardedManager(group="users", key="id")

        class Meta:
            app_label = "testapp"

    messages = checks._check_many_to_many(Doc)
    assert [m.id for m in messages] == ["django_shards.E015"]
    assert "Doc.labels" in messages[0].msg
