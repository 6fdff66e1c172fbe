"""Reading a server's /metrics page as an operator's Prometheus would."""

import re
import urllib.request


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """The metrics page as {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """One sample by name and labels, whatever the label order; 0 if absent."""
    for key, value in samples.items():
        match = re.fullmatch(r"([^{]+)(?:\{(.*)\})?", key)
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if match.group(1) == name and all(found.get(k) == v for k, v in labels.items()):
            return value
    return 0.0
