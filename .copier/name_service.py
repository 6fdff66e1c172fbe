"""copier's task: name a copy of the template after its service, with a fresh password.

`copy NAME` (in the new copy): SERVICE_NAME, MYSQL_USER and MYSQL_DATABASE in
config.env become NAME and MYSQL_PASSWORD a random one; the word `ledger` (the
template's own name) becomes NAME in the deployment files. `update NAME`
(after `copier update`): the deployment files only, for what the update
brought in (a new manifest still says `ledger`); config.env stays yours.
"""

import re
import secrets
import sys
from pathlib import Path

TEMPLATE_NAME = "ledger"
DEPLOYMENT_FILES = ["docker-compose.yml", "compose.scale.yaml", *sorted(str(p) for p in Path("k8s").glob("*.yaml"))]


def name_config(name: str) -> None:
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


def name_deployment(name: str) -> None:
    for path in map(Path, DEPLOYMENT_FILES):
        path.write_text(re.sub(rf"\b{TEMPLATE_NAME}\b", name, path.read_text()))


if __name__ == "__main__":
    operation, new_name = sys.argv[1:]
    if operation == "copy":
        name_config(new_name)
    name_deployment(new_name)
