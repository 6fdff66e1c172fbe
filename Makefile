# `make test` runs the whole suite on a fresh clone: it installs the system
# library mysqlclient builds against and the Apache Thrift compiler the
# stock-client tests use (each when missing), creates .venv, installs the
# pinned packages, lints, and runs pytest against a throwaway database.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: test run migrate bench

test: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PYTHON) -m pytest

run: $(VENV)/installed
	$(PYTHON) server.py

migrate: $(VENV)/installed
	$(PYTHON) db.py migrate

bench: $(VENV)/installed
	$(PYTHON) -m tools.bench

$(VENV)/installed: requirements.txt requirements-dev.txt
	pkg-config --exists libmariadb || pkg-config --exists mysqlclient || \
		(apt-get update -qq && apt-get install -y -qq libmariadb-dev pkg-config)
	command -v thrift >/dev/null || (apt-get update -qq && apt-get install -y -qq thrift-compiler)
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@
