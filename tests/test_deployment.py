"""The container path, checked without a Docker engine.

docker-compose.yml must match the Compose specification, the Dockerfile must
pass hadolint, and the ledger service's own command and environment, started
here against the test database, must serve client.py.
"""

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonschema
import yaml
from dotenv import dotenv_values

from conftest import ROOT, LedgerProcess, free_port, run_python

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CONFIG = dotenv_values(ROOT / "config.env")
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Variables the mysql:8.4 image reads that the service's code does not.
IMAGE_ONLY_VARIABLES = {"MYSQL_RANDOM_ROOT_PASSWORD"}


def dockerfile_exec_form(instruction: str) -> list[str]:
    """The JSON array of the last CMD (or HEALTHCHECK ... CMD) in the Dockerfile."""
    joined = DOCKERFILE.replace("\\\n", " ")
    pattern = r"^CMD (\[.*\])$" if instruction == "CMD" else r"^HEALTHCHECK .* CMD (\[.*\])$"
    return json.loads(re.findall(pattern, joined, flags=re.M)[-1])


def service_environment(service: str) -> dict[str, str]:
    """What compose gives the service: its env_file, then its environment."""
    definition = COMPOSE["services"][service]
    env: dict[str, str] = {}
    for env_file in [definition["env_file"]] if isinstance(definition["env_file"], str) else definition["env_file"]:
        env.update(dotenv_values(ROOT / env_file))
    env.update({name: str(value) for name, value in definition.get("environment", {}).items()})
    return env


def test_compose_file_matches_the_compose_specification():
    schema = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
    jsonschema.Draft7Validator(schema).validate(COMPOSE)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "")


def test_dockerfile_copies_files_that_exist():
    for line in re.findall(r"^COPY (?!--from)(.*)$", DOCKERFILE, flags=re.M):
        for source in line.split()[:-1]:
            assert list(ROOT.glob(source)), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    for module in ("server.py", "handlers.py", "db.py", "settings.py", "thread_pool_server.py", "client.py"):
        assert module not in ignored


def test_every_setting_the_code_reads_is_in_config_env_and_back():
    read_by_code = set(re.findall(r'(?:text|number)\("([A-Z0-9_]+)"', (ROOT / "settings.py").read_text()))
    assert read_by_code == set(CONFIG)
    for service in ("mysql", "ledger", "client"):
        overrides = set(COMPOSE["services"][service].get("environment", {}))
        assert overrides <= read_by_code | IMAGE_ONLY_VARIABLES, service


def test_stop_grace_period_outlasts_the_drain_timeout():
    grace = int(COMPOSE["services"]["ledger"]["stop_grace_period"].removesuffix("s"))
    assert grace > float(service_environment("ledger")["THRIFT_DRAIN_TIMEOUT"]) + 5


def test_the_compose_ledger_command_serves_client_py(database, tmp_path):
    env = service_environment("ledger")
    # Only what cannot be the same outside a container changes: the database
    # address, and the ports (the container's 9090 and 9100 may be taken here).
    env.update(database)
    metrics_port = free_port()
    env["METRICS_PORT"] = str(metrics_port)
    command = [sys.executable if part == "python" else part for part in dockerfile_exec_form("CMD")]
    server = LedgerProcess(env, tmp_path / "compose-ledger.log", command=command)
    try:
        created = run_python("client.py", "--servers", f"127.0.0.1:{server.port}", "create-account", "alice")
        assert created.returncode == 0 and "alice" in created.stdout
        healthcheck = dockerfile_exec_form("HEALTHCHECK")
        assert healthcheck[:2] == ["python", "client.py"]
        health = run_python(*healthcheck[1:], **server.env)
        assert health.returncode == 0, health.stdout + health.stderr
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
        assert b"ledger_requests_total" in metrics
    finally:
        assert server.stop(signal.SIGTERM) == 0
