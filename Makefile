# `make test` runs the whole suite on a fresh clone: it installs the system
# packages it needs (each only when missing), creates .venv, installs the
# pinned packages, lints, and runs pytest against a throwaway database.
VENV := .venv
PYTHON := $(VENV)/bin/python
# --no-remove: where a package conflicts with one installed (mariadb-server with MySQL's), stop, never replace it.
APT_INSTALL := apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-remove

.PHONY: test format run migrate bench

test: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PYTHON) -m pytest

# What `make test` checks first, fixed: import order, formatting.
format: $(VENV)/installed
	$(VENV)/bin/ruff check --fix-only .
	$(VENV)/bin/ruff format .

run: $(VENV)/runtime
	$(PYTHON) server.py

migrate: $(VENV)/runtime
	$(PYTHON) db.py migrate

bench: $(VENV)/installed
	$(PYTHON) -m tools.bench

# What the server needs: mysqlclient compiles against libmariadb-dev.
$(VENV)/runtime: requirements.txt requirements-client.txt
	pkg-config --exists libmariadb || pkg-config --exists mysqlclient || ($(APT_INSTALL) libmariadb-dev pkg-config)
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# What the tests need besides: they start throwaway MariaDB servers from
# mariadb-server's programs, generate stock Apache Thrift clients with
# thrift-compiler (Python, and Java compiled against libthrift-java with a
# JDK), and run the image's command under its init, tini.
# `make run` never installs these.
$(VENV)/installed: $(VENV)/runtime requirements-dev.txt Makefile
	PATH="$$PATH:/usr/sbin" command -v mariadbd >/dev/null || ($(APT_INSTALL) mariadb-server)
	command -v thrift >/dev/null || ($(APT_INSTALL) thrift-compiler)
	command -v javac >/dev/null || ($(APT_INSTALL) default-jdk-headless)
	test -f /usr/share/java/thrift.jar || ($(APT_INSTALL) libthrift-java)
	command -v tini >/dev/null || ($(APT_INSTALL) tini)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@
