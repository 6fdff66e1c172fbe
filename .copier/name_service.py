"""copier's task: name a copy of the template after its service, with a fresh password.

`copy NAME` (in the new copy) names config.env, the deployment files and the README after NAME. `update NAME`
(after `copier update`) names only the deployment files the update brought in; your own files stay yours.
"""

import re
import secrets
import subprocess
import sys
from pathlib import Path

TEMPLATE_NAME = "ledger"
DEPLOYMENT_FILES = ["docker-compose.yml", "compose.scale.yaml", *sorted(str(p) for p in Path("k8s").glob("*.yaml"))]
# In the README: `ledger` alone (compose service, Kubernetes objects, loggers) or as the metrics' prefix;
# not where the README names the template's name, which a later update still brings.
NAMED_IN_README = re.compile(rf"(?<!template's name, `)\b{TEMPLATE_NAME}(?=\b|_)(?!_thrift\b|_helpers\b)")


def name_config(name: str) -> None:
    """SERVICE_NAME, MYSQL_USER and MYSQL_DATABASE in config.env become `name`; MYSQL_PASSWORD a random one."""
    values = {
        "SERVICE_NAME": name,
        "MYSQL_USER": name,
        "MYSQL_DATABASE": name,
        "MYSQL_PASSWORD": secrets.token_urlsafe(24),
    }
    config = Path("config.env")
    text = config.read_text()
    for variable, value in values.items():
        text = re.sub(rf"^{variable}=.*$", f"{variable}={value}", text, flags=re.M)
    config.write_text(text)


def name_deployment(name: str, files: list[str]) -> None:
    """The word `ledger` (the template's own name) becomes `name` in `files`."""
    for path in map(Path, files):
        path.write_text(re.sub(rf"\b{TEMPLATE_NAME}\b", name, path.read_text()))


def name_readme(name: str) -> None:
    """`ledger` becomes `name` in the README's commands and names of the deployment.

    Not in the example's `ledger_thrift` and `ledger_helpers`, which stay until you replace the example.
    """
    readme = Path("README.md")
    readme.write_text(NAMED_IN_README.sub(name, readme.read_text()))


def brought_by_update() -> list[str]:
    """The deployment files git does not know yet: `copier update` starts from a clean work tree.

    copier also runs this task where it renders the old version, outside git:
    nothing is renamed there, so your renames stay among the changes it
    re-applies to the files the template already had.
    """
    untracked = ["git", "ls-files", "--others", "--exclude-standard", "--", *DEPLOYMENT_FILES]
    listed = subprocess.run(untracked, capture_output=True, text=True)
    return listed.stdout.split() if listed.returncode == 0 else []


if __name__ == "__main__":
    operation, new_name = sys.argv[1:]
    if operation == "copy":
        name_config(new_name)
        name_deployment(new_name, DEPLOYMENT_FILES)
        name_readme(new_name)
    elif operation == "update":
        name_deployment(new_name, brought_by_update())
    else:  # a copier older than copier.yml allows renders no operation: the copy would keep "ledger"
        sys.exit(f"error: copier said no operation ({operation!r}): use copier 9.6.0 or newer")
