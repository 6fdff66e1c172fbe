"""The Kubernetes manifests (k8s/), checked without a cluster.

Every resource kustomization.yaml lists must validate strictly against kubernetes-validate's schemas (offline),
and what the manifests promise must hold: settings that match config.env, a grace period that outlasts the drain,
a locked-down container sized to its CPU limit, and probes (run here against a real server) that tell a lost
database from a draining server.
"""

import re
import shutil
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from helpers.contract import answer, methods, plausible_arguments, service_in
from helpers.metrics import sample, scrape
from helpers.processes import ROOT, ServerProcess
from servicekit.client import PooledClient
from servicekit.mysql import HEALTH_CHECK_TIMEOUT_SECONDS
from servicekit.settings import ServerSettings, declared, load
from tools.throwaway_db import free_port, wait_for

K8S = ROOT / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
RESOURCES = [doc for name in KUSTOMIZATION["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
CONFIG = dotenv_values(ROOT / "config.env")
SERVICE = CONFIG["SERVICE_NAME"]
IDL_SERVICE = service_in(ROOT / "service.thrift")
SECRET_SETTINGS = {setting.name.upper() for setting in declared() if not setting.repr}
# The oldest Kubernetes the manifests are checked against, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def resource(kind: str, name: str) -> dict:
    return next(doc for doc in RESOURCES if doc["kind"] == kind and doc["metadata"]["name"] == name)


DEPLOYMENT = resource("Deployment", SERVICE)
POD = DEPLOYMENT["spec"]["template"]
CONTAINER = next(container for container in POD["spec"]["containers"] if container["name"] == SERVICE)
CONFIG_MAP = resource("ConfigMap", f"{SERVICE}-config")["data"]
SECRET = resource("Secret", f"{SERVICE}-secrets")["stringData"]


def probe_timeout(probe: str) -> float:
    """The --timeout a probe's command is given."""
    command = CONTAINER[probe]["exec"]["command"]
    return float(command[command.index("--timeout") + 1])


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("1", "1500m") in cores."""
    whole, milli = re.fullmatch(r"(\d+)(m?)", quantity).groups()
    return int(whole) / 1000 if milli else int(whole)


def test_every_manifest_validates_strictly_against_the_kubernetes_schemas():
    validate = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    versions = [option for version in KUBERNETES_VERSIONS for option in ("-k", version)]
    files = [str(K8S / name) for name in KUSTOMIZATION["resources"]]
    result = subprocess.run([validate, "--strict", *versions, *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # An unknown kind or API version is only a warning with status 0: every resource must have passed.
    lines = result.stdout.splitlines()
    assert all(" passed for resource " in line for line in lines), result.stdout
    assert len(lines) == len(RESOURCES) * len(KUBERNETES_VERSIONS)


def test_kustomization_applies_every_manifest_in_the_folder():
    listed = KUSTOMIZATION["resources"]
    assert sorted(listed) == sorted(path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
    assert [image["name"] for image in KUSTOMIZATION["images"]] == [CONTAINER["image"]]


def test_the_config_map_and_the_secret_hold_exactly_the_settings_of_config_env(tmp_path):
    assert set(CONFIG_MAP) == set(CONFIG) - SECRET_SETTINGS
    assert set(SECRET) == SECRET_SETTINGS
    assert CONTAINER["envFrom"] == [
        {"configMapRef": {"name": f"{SERVICE}-config"}},
        {"secretRef": {"name": f"{SERVICE}-secrets"}},
    ]
    assert "env" not in CONTAINER  # no value, least of all the password, written into the Deployment
    empty = tmp_path / "empty.env"
    empty.touch()
    settings = load(ServerSettings, empty, {**CONFIG_MAP, **SECRET})  # valid on their own, nothing from config.env
    assert settings.service_name == SERVICE


def test_a_rolling_update_keeps_three_serving_and_the_grace_period_outlasts_sleep_and_drain():
    assert DEPLOYMENT["spec"]["replicas"] == 3
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    sleep = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = float(CONFIG_MAP["THRIFT_DRAIN_TIMEOUT"])
    assert POD["spec"]["terminationGracePeriodSeconds"] > float(sleep[1]) + drain + 5
    budget = resource("PodDisruptionBudget", SERVICE)["spec"]
    assert (
        budget["maxUnavailable"] == 1 and budget["selector"]["matchLabels"].items() <= POD["metadata"]["labels"].items()
    )


def test_probes_ask_the_right_question_within_their_time():
    assert CONTAINER["readinessProbe"]["exec"]["command"][3] == "health"  # serving and the database answers
    assert CONTAINER["livenessProbe"]["exec"]["command"][3] == "ping"  # never touches the database
    assert CONTAINER["startupProbe"]["exec"]["command"][3] == "ping"
    assert probe_timeout("readinessProbe") >= HEALTH_CHECK_TIMEOUT_SECONDS + 1  # a lost database is an answer
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert CONTAINER[probe]["exec"]["command"][:3] == ["python", "-m", "servicekit.probe"]
        assert probe_timeout(probe) + 1 < CONTAINER[probe]["timeoutSeconds"], probe
    startup = CONTAINER["startupProbe"]
    migration_lock = float(CONFIG_MAP["DB_MIGRATION_LOCK_TIMEOUT"])
    assert startup["periodSeconds"] * startup["failureThreshold"] >= migration_lock * 2


def test_the_container_is_locked_down_runs_as_the_images_user_and_fits_its_cpu_limit():
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_user = int(re.search(r"^USER (\d+)", dockerfile, flags=re.M).group(1))
    pod_security = POD["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == image_user
    assert CONTAINER["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    resources = CONTAINER["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    assert cpu_cores(resources["requests"]["cpu"]) <= cpu_cores(resources["limits"]["cpu"])
    assert int(CONFIG_MAP["THRIFT_PROCESSES"]) <= cpu_cores(resources["limits"]["cpu"])


def test_services_reach_the_thrift_port_prometheus_the_metrics_port_and_the_service_its_database():
    ports = {port["name"]: port["containerPort"] for port in CONTAINER["ports"]}
    assert ports == {"thrift": int(CONFIG_MAP["THRIFT_PORT"]), "metrics": int(CONFIG_MAP["METRICS_PORT"])}
    for name in (f"{SERVICE}-headless", SERVICE):
        spec = resource("Service", name)["spec"]
        assert spec["selector"].items() <= POD["metadata"]["labels"].items()
        assert [(port["port"], port["targetPort"]) for port in spec["ports"]] == [(ports["thrift"], "thrift")]
    assert resource("Service", f"{SERVICE}-headless")["spec"]["clusterIP"] == "None"
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    database = resource("Service", CONFIG_MAP["MYSQL_HOST"])["spec"]
    assert [port["port"] for port in database["ports"]] == [int(CONFIG_MAP["MYSQL_PORT"])]


@pytest.fixture
def pod(own_database, tmp_path):
    """The Deployment's container here: its command, the ConfigMap and the Secret, on a database that can hang.

    Only what cannot be the same outside a cluster changes (the database's
    address and credentials, free ports), and the database timeouts: a call
    must outlast the drain the test holds open.
    """
    env = {**CONFIG_MAP, **SECRET, **own_database.env, "METRICS_PORT": str(free_port())}
    env.update(MYSQL_CONNECT_TIMEOUT="60", MYSQL_READ_TIMEOUT="60")
    client_class = partial(PooledClient, IDL_SERVICE)
    server = ServerProcess("server.py", client_class, env, tmp_path / "pod.log", command=[sys.executable, "server.py"])
    yield server
    own_database.process.send_signal(signal.SIGCONT)
    if server.process.poll() is None:
        server.stop(signal.SIGKILL)


def run_probes(pod: ServerProcess, *probes: str) -> list[int]:
    """Run the probes' commands in the pod's environment, side by side; their exit statuses."""
    running = [
        subprocess.Popen(
            [sys.executable, *CONTAINER[probe]["exec"]["command"][1:]],
            cwd=ROOT,
            env=pod.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for probe in probes
    ]
    for probe, process in zip(probes, running, strict=True):
        print(probe, process.communicate(timeout=30)[0])  # shown if the test fails
    return [process.returncode for process in running]


def a_call_that_reaches_the_database(client: PooledClient) -> tuple[str, tuple]:
    """A method of service.thrift, with arguments, that its handler takes to the database."""
    for method in methods(IDL_SERVICE):
        arguments = plausible_arguments(IDL_SERVICE, method)
        if answer(client, method, arguments) != "InvalidArgument":
            return method, arguments
    raise AssertionError("no method of service.thrift reached the database")


def test_readiness_fails_without_the_database_or_once_draining_while_liveness_holds(pod, own_database):
    assert run_probes(pod, "startupProbe", "readinessProbe", "livenessProbe") == [0, 0, 0]
    with pod.client(timeout=60, retries=0) as client:
        method, arguments = a_call_that_reaches_the_database(client)
        own_database.process.send_signal(signal.SIGSTOP)  # the database stops answering
        assert run_probes(pod, "readinessProbe", "livenessProbe") == [7, 0]  # unready, not restarted
        caller = threading.Thread(target=answer, args=(client, method, arguments))
        caller.start()
        busy = f"{SERVICE}_busy_workers"
        wait_for(lambda: sample(scrape(int(pod.env["METRICS_PORT"])), busy) >= 1, 10, "a call waiting on the database")
        pod.process.send_signal(signal.SIGTERM)  # the drain waits for that call
        # Unready: the connection is refused (8), or health says serving=false (7) if it got in first.
        assert run_probes(pod, "readinessProbe")[0] in (7, 8)
        assert pod.process.poll() is None  # still draining
        own_database.process.send_signal(signal.SIGCONT)
        caller.join(30)
    assert not caller.is_alive()
    assert pod.process.wait(30) == 0
