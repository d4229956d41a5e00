"""A user's own project, set up as ``docs/quickstart.md`` says, runs its own test suite.

The project is made in a temporary directory: ``django-admin startproject``, ``startapp
blog``, the quickstart's settings block and models copied from the page as they are, the
database URLs in ``.env`` (SQLite, each replica on its primary's file, as the page says).
Its tests (a ``TestCase`` and a ``TransactionTestCase``: create, read by default and with
``eventual()``, update, delete, fan out) run with Django's default test databases, in
memory, under ``manage.py test`` and under pytest-django, each in a subprocess of the
current interpreter. Both must pass.

Independent of ``SHARDS_DB``: the user's project has databases of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"
TIMEOUT = 120

DJANGO_TESTS = """\
from django.test import TestCase, TransactionTestCase

from blog.models import Author, Post


class AuthorTests(TestCase):
    databases = "__all__"

    def test_create_read_update_delete(self):
        a = Author.objects.create(email="a@example.org")
        Post.objects.create(author=a, title="Hello")
        self.assertEqual(Author.objects.get(pk=a.pk).email, "a@example.org")
        self.assertEqual(Author.objects.eventual().get(pk=a.pk).email, "a@example.org")
        self.assertEqual(list(a.post_set.values_list("title", flat=True)), ["Hello"])
        self.assertEqual(Post.objects.count(), 1)  # fan-out
        self.assertEqual(Post.objects.eventual().count(), 1)
        Author.objects.filter(pk=a.pk).update(email="b@example.org")
        a.refresh_from_db()
        self.assertEqual(a.email, "b@example.org")
        a.delete()  # and its post, on its shard
        self.assertFalse(Author.objects.filter(pk=a.pk).exists())
        self.assertEqual(Post.objects.count(), 0)

    def test_a_second_test_starts_empty(self):
        Author.objects.create(email="c@example.org")
        self.assertEqual(Author.objects.count(), 1)


class AuthorTransactionTests(TransactionTestCase):
    databases = "__all__"

    def test_create_read_update_delete(self):
        authors = [Author.objects.create(email=f"{i}@example.org") for i in range(6)]
        for a in authors:
            Post.objects.create(author=a, title=f"by {a.email}")
        a = authors[0]
        self.assertEqual(Author.objects.get(pk=a.pk).email, "0@example.org")
        self.assertEqual(Author.objects.eventual().get(pk=a.pk).email, "0@example.org")
        self.assertEqual(Post.objects.count(), 6)  # fan-out on worker threads
        self.assertEqual(Post.objects.eventual().count(), 6)
        a.email = "z@example.org"
        a.save()
        self.assertEqual(Author.objects.strong().get(pk=a.pk).email, "z@example.org")
        a.delete()
        self.assertEqual(Author.objects.count(), 5)
        self.assertEqual(Post.objects.count(), 5)
"""

PYTEST_TESTS = """\
import pytest

from blog.models import Author, Post


@pytest.mark.django_db(databases="__all__")
def test_create_read_update_delete():
    a = Author.objects.create(email="a@example.org")
    Post.objects.create(author=a, title="Hello")
    assert Author.objects.eventual().get(pk=a.pk).email == "a@example.org"
    assert Post.objects.count() == 1
    Author.objects.filter(pk=a.pk).update(email="b@example.org")
    assert Author.objects.get(pk=a.pk).email == "b@example.org"
    a.delete()
    assert not Author.objects.filter(pk=a.pk).exists()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_create_read_delete_committed():
    a = Author.objects.create(email="a@example.org")
    assert Author.objects.eventual().get(pk=a.pk).email == "a@example.org"
    assert Author.objects.count() == 1
    a.delete()
    assert Author.objects.count() == 0
"""


def python_block_after(heading: str) -> str:
    """The first ```python block after ``heading`` in the quickstart, as written."""
    text = QUICKSTART.read_text()
    start = text.index(f"\n{heading}\n")
    match = re.compile(r"^```python\n(.*?)^```$", re.M | re.S).search(text, start)
    assert match, f"no python block after {heading!r} in {QUICKSTART}"
    return match.group(1)


def clean_environment() -> dict[str, str]:
    """This process's environment without what points at the suite's own databases."""
    return {
        k: v
        for k, v in os.environ.items()
        if not (k.endswith("_URL") or k.startswith(("SHARDS_", "DJANGO_", "PYTEST_")))
    }


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def report(done: subprocess.CompletedProcess[str]) -> str:
    out, err = done.stdout[-4000:], done.stderr[-6000:]
    return f"exit {done.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


@pytest.fixture(scope="module")
def user_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user_project")
    for argv, cwd in (
        (("-m", "django", "startproject", "mysite", str(root)), root),
        (("manage.py", "startapp", "blog"), root),
    ):
        done = run(*argv, cwd=cwd)
        assert done.returncode == 0, report(done)
    settings = root / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + python_block_after("## Settings"))
    (root / "blog" / "models.py").write_text(python_block_after("## Models"))
    var = root / "var"
    var.mkdir()
    (root / ".env").write_text(
        f"DATABASE_URL=sqlite:///{var}/catalog.sqlite3\n"
        f"U0_URL=sqlite:///{var}/u0.sqlite3\n"
        f"U0_R1_URL=sqlite:///{var}/u0.sqlite3\n"
        f"U1_URL=sqlite:///{var}/u1.sqlite3\n"
        f"U1_R1_URL=sqlite:///{var}/u1.sqlite3\n"
    )
    (root / "blog" / "tests.py").write_text(DJANGO_TESTS)
    (root / "blog" / "test_with_pytest.py").write_text(PYTEST_TESTS)
    (root / "pytest.ini").write_text(
        "[pytest]\nDJANGO_SETTINGS_MODULE = mysite.settings\n"
        "python_files = tests.py test_*.py\naddopts = -p no:cacheprovider\n"
    )
    done = run("manage.py", "makemigrations", "blog", cwd=root)
    assert done.returncode == 0, report(done)
    done = run("manage.py", "check", "--fail-level", "WARNING", cwd=root)
    assert done.returncode == 0, report(done)
    return root


def test_manage_py_test_passes_with_the_quickstart_settings(user_project: Path) -> None:
    done = run("manage.py", "test", "--noinput", cwd=user_project)
    assert done.returncode == 0, report(done)
    assert "Ran 3 tests" in done.stderr, report(done)


def test_pytest_django_passes_with_the_quickstart_settings(user_project: Path) -> None:
    done = run("-m", "pytest", "-q", cwd=user_project)
    assert done.returncode == 0, report(done)
    assert "5 passed" in done.stdout, report(done)
