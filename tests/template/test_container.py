"""The container path, checked without a Docker engine.

docker-compose.yml (and compose.scale.yaml over it) must match the Compose
specification, the Dockerfile must pass hadolint, and the service's own
compose command and environment, started here against the test database
with the image's Python and the pinned requirements, must serve client.py.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonschema
import MySQLdb
import pytest
import yaml
from dotenv import dotenv_values

from helpers.mysql import connect_kwargs, statement_waits
from helpers.processes import PROJECT_ENV, ROOT, ServerProcess, base_client, run_python
from servicekit.settings import declared
from tools.throwaway_db import free_port, wait_for

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CONFIG = dotenv_values(ROOT / "config.env")
SERVICE = CONFIG["SERVICE_NAME"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Variables the mysql:8.4 image reads that the service's code does not.
IMAGE_ONLY_VARIABLES = {"MYSQL_RANDOM_ROOT_PASSWORD"}
PRINT_VERSION = "import sys; print('%d.%d' % sys.version_info[:2])"


class ComposeLoader(yaml.SafeLoader):
    """Reads Compose's own tag: `!reset` drops what the files before set."""


ComposeLoader.add_constructor("!reset", lambda loader, node: [])


def dockerfile_exec_form(instruction: str) -> list[str]:
    """The JSON array of the last CMD, ENTRYPOINT (or HEALTHCHECK ... CMD) in the Dockerfile."""
    joined = DOCKERFILE.replace("\\\n", " ")
    pattern = rf"^{instruction} (\[.*\])$" if instruction != "HEALTHCHECK" else r"^HEALTHCHECK .* CMD (\[.*\])$"
    return json.loads(re.findall(pattern, joined, flags=re.M)[-1])


def service_environment(service: str) -> dict[str, str]:
    """What compose gives the service: its env_file, then its environment."""
    definition = COMPOSE["services"][service]
    env: dict[str, str] = {}
    for env_file in [definition["env_file"]] if isinstance(definition["env_file"], str) else definition["env_file"]:
        env.update(dotenv_values(ROOT / env_file))
    env.update({name: str(value) for name, value in definition.get("environment", {}).items()})
    return env


def validate_compose(document: dict) -> None:
    schema = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
    jsonschema.Draft7Validator(schema).validate(document)


def test_the_compose_file_matches_the_compose_specification():
    validate_compose(COMPOSE)
    assert COMPOSE["name"] == SERVICE and SERVICE in COMPOSE["services"]


def test_ports_are_published_on_localhost_only():
    for service in COMPOSE["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_the_scale_override_drops_host_ports_so_replicas_do_not_clash():
    override = yaml.load((ROOT / "compose.scale.yaml").read_text(), ComposeLoader)
    merged = {**COMPOSE, "services": {**COMPOSE["services"]}}
    merged["services"][SERVICE] = {**COMPOSE["services"][SERVICE], **override["services"][SERVICE]}
    validate_compose(merged)
    assert merged["services"][SERVICE]["ports"] == []
    assert merged["services"][SERVICE]["scale"] == 3  # `up` with both files starts replicas, no --scale needed
    assert service_environment("client")["THRIFT_HOST"] == SERVICE  # the name that resolves to every replica


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "")


def test_the_dockerfile_copies_files_that_exist_and_dockerignore_keeps_them():
    for line in re.findall(r"^COPY (?!--from)(.*)$", DOCKERFILE, flags=re.M):
        for source in line.split()[:-1]:
            assert list(ROOT.glob(source)), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("server.py", "handlers.py", "db.py", "client.py", "servicekit", "requirements-client.txt"):
        assert needed not in ignored


def copy_as_the_image_does(context: Path, app: Path) -> None:
    """Into `app` (the image's /app), what the runtime stage's COPY lines take from the build context."""
    runtime_stage = DOCKERFILE.split("\nFROM ")[-1]
    for line in re.findall(r"^COPY (?!--from)(.*)$", runtime_stage, flags=re.M):
        *sources, destination = line.split()
        target = app / destination
        for path in (path for source in sources for path in sorted(context.glob(source))):
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / path.name)


def test_the_image_holds_what_server_py_imports_an_idl_split_in_two_included(tmp_path):
    # Thrift services often keep their structs in an IDL of their own beside the service's.
    context, app = tmp_path / "context", tmp_path / "app"
    shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(".git", ".venv", "*_cache", ".hypothesis", "tests"))
    (context / "shared_types.thrift").write_text("struct Unused { 1: i64 id }\n")
    idl = context / "service.thrift"
    idl.write_text('include "shared_types.thrift"\n' + idl.read_text())
    copy_as_the_image_does(context, app)
    imported = run_python("-c", "import server", cwd=app, PYTHONPATH=str(app))
    assert imported.returncode == 0, imported.stderr


def test_the_image_keeps_config_env_without_its_password(tmp_path):
    runtime_stage = DOCKERFILE.split("\nFROM ")[-1]  # what ships: no layer of it may hold the password
    copies_of_config_env = re.findall(r"^COPY .*config\.env.*$", runtime_stage, flags=re.M)
    assert copies_of_config_env == ["COPY --from=build /build/config.env ./"]
    shutil.copy(ROOT / "config.env", tmp_path / "config.env")
    for command in re.findall(r"^RUN (.*config\.env.*)$", DOCKERFILE, flags=re.M):  # the build stage's, here
        subprocess.run(["sh", "-c", command.replace("/build/", f"{tmp_path}/")], check=True)
    in_image = dotenv_values(tmp_path / "config.env")
    assert "MYSQL_PASSWORD" not in in_image
    assert in_image == {k: v for k, v in dotenv_values(ROOT / "config.env").items() if k != "MYSQL_PASSWORD"}


def test_compose_overrides_only_declared_settings():
    names = {setting.name.upper() for setting in declared()}
    for service in ("mysql", SERVICE, "client"):
        overrides = set(COMPOSE["services"][service].get("environment", {}))
        assert overrides <= names | IMAGE_ONLY_VARIABLES, service


def test_the_stop_grace_period_outlasts_the_drain_timeout():
    grace = int(COMPOSE["services"][SERVICE]["stop_grace_period"].removesuffix("s"))
    assert grace > float(service_environment(SERVICE)["THRIFT_DRAIN_TIMEOUT"]) + 5


def test_the_healthcheck_finishes_inside_its_own_timeout():
    healthcheck = re.search(r"^HEALTHCHECK .*--timeout=(\d+)s", DOCKERFILE.replace("\\\n", " "), flags=re.M)
    command = dockerfile_exec_form("HEALTHCHECK")
    assert float(command[command.index("--timeout") + 1]) + 1 < int(healthcheck.group(1))


def python_of_version(version: str) -> str | None:
    """An interpreter of `version` ("3.12") on this machine: on PATH, or one that pyenv installed."""
    pyenv_versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python{version}"), *map(str, sorted(pyenv_versions.glob(f"{version}.*/bin/python3")))]
    for candidate in filter(None, candidates):  # a pyenv shim on PATH fails unless its version is selected
        answer = subprocess.run([candidate, "-c", PRINT_VERSION], capture_output=True, text=True)
        if answer.returncode == 0 and answer.stdout.strip() == version:
            return candidate
    return None


@pytest.fixture(scope="session")
def image_python(tmp_path_factory) -> str:
    """`python` as in the image: its Python version, with requirements.txt installed in a new venv."""
    versions = set(re.findall(r"^FROM python:(\d+\.\d+)-", DOCKERFILE, flags=re.M))
    assert len(versions) == 1, f"the Dockerfile's stages use different Pythons: {versions}"
    version = versions.pop()
    interpreter = python_of_version(version)
    if interpreter is None:
        pytest.skip(f"Python {version}, the image's, is not installed here (pyenv install {version})")
    venv = tmp_path_factory.mktemp("image-venv")
    made = subprocess.run([interpreter, "-m", "venv", venv], capture_output=True, text=True)
    if made.returncode != 0:  # e.g. Debian's python3.12 without python3.12-venv
        pytest.skip(f"{interpreter} cannot make a venv: {made.stderr.strip().splitlines()[-1:]}")
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", ROOT / "requirements.txt"], check=True)
    return str(venv / "bin" / "python")


@pytest.fixture
def compose_server(database_server, image_python, tmp_path):
    env = service_environment(SERVICE)
    # Only what cannot be the same outside a container changes: the database
    # address, and the ports (the container's 9090 and 9100 may be taken here).
    env.update(database_server.database("compose_test"))
    env["METRICS_PORT"] = str(free_port())
    command = [image_python if part == "python" else part for part in dockerfile_exec_form("CMD")]
    server = ServerProcess("server.py", base_client, env, tmp_path / "compose.log", command=command)
    yield server
    assert server.stop(signal.SIGTERM) == 0


def test_the_compose_command_serves_client_py_the_healthcheck_and_metrics(compose_server, image_python):
    port = compose_server.port
    pinged = run_python("client.py", "--servers", f"127.0.0.1:{port}", "ping")
    assert (pinged.returncode, pinged.stdout) == (0, "pong\n")
    healthcheck = dockerfile_exec_form("HEALTHCHECK")
    assert healthcheck[:3] == ["python", "-m", "servicekit.probe"]
    health = subprocess.run(
        [image_python, *healthcheck[1:]], cwd=ROOT, env=compose_server.env, capture_output=True, text=True, timeout=60
    )
    assert health.returncode == 0, health.stdout + health.stderr
    metrics_port = compose_server.env["METRICS_PORT"]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    assert f"{SERVICE}_requests_total".encode() in metrics


def test_sigterm_stops_the_image_command_as_pid_1_while_it_waits_to_migrate(database_server, tmp_path):
    # PID 1 gets no default action for a signal it has no handler for: python as PID 1 ignored `docker stop`
    # until the server set its handler, after migrating. In a PID namespace of its own, as in a container.
    # --kill-child: if the test kills unshare, tini and the server go too.
    unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if subprocess.run([*unshare, "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare cannot make a PID namespace here (user namespaces disabled?)")
    database = database_server.database("pid_one_test")
    holder = MySQLdb.connect(**connect_kwargs(database))
    holder.cursor().execute("SELECT GET_LOCK(LEFT(CONCAT('migrations:', DATABASE()), 64), 60)")
    command = [sys.executable if part == "python" else part for part in dockerfile_exec_form("CMD")]
    env = {**PROJECT_ENV, **database, "THRIFT_PORT": str(free_port()), "DB_MIGRATION_LOCK_TIMEOUT": "60"}
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [*unshare, *dockerfile_exec_form("ENTRYPOINT"), *command], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        wait_for(lambda: statement_waits(database, "SELECT GET_LOCK"), 30, "the server to wait for the lock")
        pid_one = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])
        os.kill(pid_one, signal.SIGTERM)
        assert process.wait(10) == 128 + signal.SIGTERM  # at once, not when the lock wait ends
    finally:
        process.kill()
        holder.close()
