"""E016: ``DJANGO_SHARDS["OPERATOR"]``, the online split's account. A wrong one is one clear
message per problem, and no message ever shows a value (they hold passwords)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_shards import conf
from tests.checks.test_checks import settings_messages, valid_shards

SECRET = "s3cret-never-shown"


def operator_messages(operator: Any) -> list[str]:
    messages = settings_messages({**valid_shards(), "OPERATOR": operator})
    assert all(SECRET not in f"{m.msg} {m.hint}" for m in messages)
    return [m.msg for m in messages if m.id == "django_shards.E016"]


@pytest.mark.parametrize(
    "operator",
    [
        None,
        {"USER": "op", "PASSWORD": SECRET},
        {"USER": "op", "PASSWORD": "", "REPLICATION_USER": "r", "REPLICATION_PASSWORD": SECRET},
    ],
)
def test_a_valid_operator_or_none_passes(operator):
    assert operator_messages(operator) == []


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        (SECRET, ["must be a dict or None, not str"]),
        ({"USER": "op"}, ["has USER but no PASSWORD"]),
        ({"PASSWORD": SECRET}, ["has PASSWORD but no USER"]),
        ({}, ["has no USER"]),
        ({"USER": "op", "PASSWORD": SECRET, "PASWORD": SECRET}, ["Unknown key 'PASWORD'"]),
        ({"USER": "op", "PASSWORD": 1234}, ["['PASSWORD'] must be a string, not int"]),
        (
            {"USER": "op", "PASSWORD": SECRET, "REPLICATION_USER": "r"},
            ["has REPLICATION_USER but no REPLICATION_PASSWORD"],
        ),
    ],
)
def test_a_wrong_operator_is_one_message_per_problem_without_its_values(operator, expected):
    messages = operator_messages(operator)
    assert len(messages) == len(expected), messages
    for message, fragment in zip(messages, expected, strict=True):
        assert fragment in message


def test_the_parsed_operator_keeps_its_passwords_out_of_repr():
    raw = {**conf.DEFAULTS, "OPERATOR": {"USER": "op", "PASSWORD": SECRET}}
    operator = conf.parse(raw).operator
    assert operator is not None and operator.user == "op" and operator.password == SECRET
    assert SECRET not in repr(conf.parse(raw))
    assert conf.parse(conf.DEFAULTS).operator is None
    with pytest.raises(ImproperlyConfigured) as caught:
        conf.parse({**conf.DEFAULTS, "OPERATOR": {"USER": "op", "PASSWORD": 1234}})
    assert "1234" not in str(caught.value)
