# Two commands set everything up on a fresh machine:
#   make demo   the example project on SQLite: migrate, seed, status, a split, a fan-out query
#   make lint   ruff, and mypy with the django-stubs plugin
#   make test   the whole suite: Django 5.2/Python 3.11 and Django 6.1/Python 3.12,
#               each on SQLite and on real MariaDB primaries with GTID replicas
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY312_BIN := $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin))
MARIADB_DIR ?= /tmp/django_shards_mariadb
export SHARDS_MARIADB_DIR := $(MARIADB_DIR)
TOX_ENVS ?= py311-django52-sqlite,py311-django52-mariadb,py312-django61-sqlite,py312-django61-mariadb

.PHONY: venv demo test test-fast browser mariadb-up mariadb-down lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,example,lint]" tox
	touch $@

demo: venv
	cd example_project && ../$(BIN)/python manage.py demo

mariadb-up:
	scripts/mariadb-topology up

mariadb-down:
	scripts/mariadb-topology down

# the status page test renders the page in Debian's headless Chromium
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (apt-get install chromium) for the browser test"; fi; }

test: venv mariadb-up browser
	source $(MARIADB_DIR)/env && PATH="$(PY312_BIN):$$PATH" $(BIN)/tox run -e $(TOX_ENVS)

# quick loop while developing: the current venv, SQLite only
test-fast: venv
	$(BIN)/pytest -q -x

# ruff over the package, the tests, the benchmarks and the example; mypy with the
# django-stubs plugin over django_shards/ (its settings: [tool.mypy] in pyproject.toml)
lint: venv
	$(BIN)/ruff check django_shards tests benchmarks example_project
	$(BIN)/ruff format --check django_shards tests benchmarks example_project
	$(BIN)/mypy

# benchmarks write benchmarks/results/*.json; the MariaDB ones (split, gtid and the
# --backend mariadb runs) need `make mariadb-up` and `source $(MARIADB_DIR)/env` first
bench: venv
	$(BIN)/python -m benchmarks.placement
	$(BIN)/python -m benchmarks.routing
	$(BIN)/python -m benchmarks.fanout --skip-memory

clean:
	rm -rf $(VENV) .tox example_project/var
