"""`copier copy` starts a new service from this repository: named after it, with a fresh password, running."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from helpers.processes import ROOT, ServerProcess, base_client, run_python

COPIER = Path(sys.executable).with_name("copier")
DEPLOYMENT = [
    "config.env",
    "docker-compose.yml",
    "compose.scale.yaml",
    "Dockerfile",
    *(f"k8s/{manifest.name}" for manifest in sorted((ROOT / "k8s").glob("*.yaml"))),
]
# Where the README's "Start your own service" puts each block of its Notes service, in the order it shows them.
NOTES_FILES = [
    "service.thrift",
    "migrations/001_notes.sql",
    "handlers.py",
    "client.py",
    "tests/service/conftest.py",
    "tests/service/test_notes.py",
]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """A copy of this repository made by copier for a service named catalog."""
    destination = tmp_path_factory.mktemp("template") / "catalog"
    result = subprocess.run(
        [COPIER, "copy", "--trust", "--defaults", "--data", "NAME=catalog", str(ROOT), str(destination)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return destination


def test_the_copy_is_named_after_its_service_with_a_fresh_password(catalog):
    for deployment_file in DEPLOYMENT:
        assert "ledger" not in (catalog / deployment_file).read_text().lower(), deployment_file
    config = dotenv_values(catalog / "config.env")
    assert (config["SERVICE_NAME"], config["MYSQL_USER"], config["MYSQL_DATABASE"]) == ("catalog",) * 3
    assert config["MYSQL_PASSWORD"] != dotenv_values(ROOT / "config.env")["MYSQL_PASSWORD"]
    assert len(config["MYSQL_PASSWORD"]) >= 24
    assert "NAME: catalog" in (catalog / ".copier" / ".copier-answers.yml").read_text()


def test_the_copys_readme_names_its_deployment_and_still_the_example(catalog):
    readme = (catalog / "README.md").read_text()
    for command in (
        "docker compose logs -f catalog",
        "--scale catalog=N",
        "kubectl rollout status deployment/catalog",
        "kubectl create secret generic catalog-secrets",
        "--servers catalog-headless:9090 health",
        "`catalog.requests`",
        "`catalog_requests_total`",
        "CREATE DATABASE `catalog`;",
    ):
        assert command in readme, command
    assert "from client import LedgerClient, ledger_thrift" in readme  # the example, until replaced
    update_brings = "template's name, `ledger`"  # what to look for after `copier update`: still the template's
    assert update_brings in readme
    for example_or_template in ("ledger_thrift", "ledger_helpers", "_ledger.", update_brings):
        readme = readme.replace(example_or_template, "")
    assert "ledger" not in readme


def test_the_copy_keeps_the_example_to_replace_and_leaves_the_template_behind(catalog):
    assert (catalog / "service.thrift").read_text() == (ROOT / "service.thrift").read_text()
    assert not (catalog / "copier.yml").exists()
    assert not (catalog / "tests" / "template" / "test_copier.py").exists()


def test_the_copy_serves_and_its_client_reports_health(catalog, database_server, tmp_path):
    database = database_server.database("catalog_test")
    server = ServerProcess("server.py", base_client, database, tmp_path / "catalog.log", cwd=catalog)
    try:
        health = run_python("client.py", "--servers", f"127.0.0.1:{server.port}", "health", cwd=catalog)
        assert health.returncode == 0, health.stderr
        assert "serving catalog on 127.0.0.1:" in server.log()
    finally:
        assert server.stop() == 0


def test_a_misnamed_migration_stops_migrate_with_one_line(catalog, database_server):
    misnamed = catalog / "migrations" / "002-add-notes.sql"
    misnamed.write_text("ALTER TABLE accounts ADD notes TEXT;\n")
    try:
        result = run_python("db.py", "migrate", cwd=catalog, **database_server.database("catalog_migrations"))
    finally:
        misnamed.unlink()
    assert result.returncode == 2
    refusal = "a migration is named NNN_description.sql (digits, then _)"
    assert result.stderr == f"error: cannot migrate: {misnamed}: {refusal}\n"


@pytest.mark.parametrize("name", ["my_notes", "mysql"])
def test_a_name_the_deployment_cannot_take_is_refused(name, tmp_path):
    # _ is not allowed in Kubernetes names; mysql is the compose file's database service.
    result = subprocess.run(
        [COPIER, "copy", "--trust", "--defaults", "--data", f"NAME={name}", str(ROOT), str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Validation error for question 'NAME'" in result.stderr
    assert not (tmp_path / name / "config.env").exists()


def test_the_naming_task_refuses_a_copier_that_names_no_operation(tmp_path):
    # copier before 9.6.0 renders {{ _copier_operation }} as "": the copy would silently keep the template's names.
    result = subprocess.run(
        [sys.executable, str(ROOT / ".copier" / "name_service.py"), "", "notes"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == "error: copier said no operation (''): use copier 9.6.0 or newer\n"


def test_an_update_brings_the_kit_and_new_deployment_files_named_but_none_of_the_replaced_example(tmp_path):
    template, shop = tmp_path / "template", tmp_path / "shop"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(template)], check=True, timeout=60)
    copy = [COPIER, "copy", "--quiet", "--trust", "--defaults", "--data", "NAME=shop", template, shop]
    subprocess.run(copy, check=True, timeout=120)
    mine = "data:\n  LEDGER_SERVERS: ledger-headless.payments.svc:9090\n"  # a real ledger service it calls
    (shop / "k8s" / "mine.yaml").write_text(mine)
    handlers = '"""The shop\'s own rules."""\n'
    (shop / "handlers.py").write_text(handlers)
    (shop / "migrations" / "001_create_ledger.sql").rename(shop / "migrations" / "001_shop.sql")
    (shop / "tests" / "service" / "test_money.py").unlink()
    commit(shop, "the copy, a manifest of its own, and its own service in place of the example")
    config = (shop / "config.env").read_text()
    (template / "k8s" / "extra.yaml").write_text("kind: ConfigMap\nmetadata:\n  name: ledger-extra\n")
    (template / "handlers.py").write_text((template / "handlers.py").read_text() + "# a change to the example\n")
    (template / "migrations" / "002_ledger_index.sql").write_text("CREATE INDEX by_owner ON accounts (owner);\n")
    (template / "tests" / "service" / "test_money.py").write_text("# the example's test, changed\n")
    kit = template / "servicekit" / "paging.py"
    kit.write_text(kit.read_text() + "# a kit fix\n")
    commit(template, "a kit fix, a new manifest, and changes to the example")
    update = [COPIER, "update", "--quiet", "--trust", "--defaults", "-a", ".copier/.copier-answers.yml"]
    subprocess.run(update, cwd=shop, check=True, timeout=120)
    assert (shop / "servicekit" / "paging.py").read_text().endswith("# a kit fix\n")
    assert "name: shop-extra" in (shop / "k8s" / "extra.yaml").read_text()
    assert (shop / "k8s" / "mine.yaml").read_text() == mine
    assert "ledger" not in (shop / "k8s" / "deployment.yaml").read_text()  # the template's, named at copy
    assert (shop / "config.env").read_text() == config  # the password and settings stay
    assert (shop / "handlers.py").read_text() == handlers
    assert sorted(path.name for path in (shop / "migrations").iterdir()) == ["001_shop.sql"]
    assert not (shop / "tests" / "service" / "test_money.py").exists()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=shop, capture_output=True, text=True, check=True)
    assert sorted(status.stdout.splitlines()) == [
        " M .copier/.copier-answers.yml",
        " M servicekit/paging.py",
        "?? k8s/extra.yaml",
    ]


def readme_notes_service() -> dict[str, str]:
    """The Notes service the README's "Start your own service" shows, file by file."""
    section = (ROOT / "README.md").read_text().split("\n## Start your own service\n")[1].split("\n## ")[0]
    blocks = re.findall(r"^```(?:thrift|sql|python)\n(.*?)^```$", section, flags=re.M | re.S)
    assert len(blocks) == len(NOTES_FILES), "the README's Notes service no longer has one block per file"
    return dict(zip(NOTES_FILES, blocks, strict=True))


def test_the_readmes_notes_service_in_place_of_the_example_passes_its_own_tests(database_server, tmp_path):
    # What a new user copies first: it must keep working as the kit changes.
    notes = tmp_path / "notes"
    copy = [COPIER, "copy", "--quiet", "--trust", "--defaults", "--data", "NAME=notes", ROOT, notes]
    subprocess.run(copy, check=True, timeout=120)
    for example in ("migrations", "tests/service"):
        shutil.rmtree(notes / example)
    for path, text in readme_notes_service().items():
        (notes / path).parent.mkdir(parents=True, exist_ok=True)
        (notes / path).write_text(text)
    server = notes / "server.py"  # as the README's table says: the import line and the service
    server.write_text(
        server.read_text()
        .replace("VERSION, LedgerHandler, ledger_thrift", "VERSION, NotesHandler, notes_thrift")
        .replace("ledger_thrift.Ledger, LedgerHandler()", "notes_thrift.Notes, NotesHandler()")
    )
    ruff = Path(sys.executable).with_name("ruff")  # make test's lint steps
    for lint in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
        linted = subprocess.run([ruff, *lint], cwd=notes, capture_output=True, text=True, timeout=60)
        assert linted.returncode == 0, linted.stdout + linted.stderr
    pytest_run = ["-m", "pytest", "tests/service", "-n", "0", "-q", "-p", "no:cacheprovider"]
    result = run_python(*pytest_run, cwd=notes, timeout=120, PYTHONPATH=str(notes), **database_server.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def commit(repository: Path, message: str) -> None:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-q", "-m", message]):
        subprocess.run(["git", *command], cwd=repository, check=True, timeout=60)
