"""Reading a process's Prometheus exposition (``GET /metrics``)."""

from __future__ import annotations

import urllib.request


def scrape(url: str) -> str:
    """The exposition text of the process at ``url``."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


Labels = tuple[tuple[str, str], ...]


def samples(url: str) -> dict[tuple[str, Labels], float]:
    """Every sample of the process at ``url``, parsed by prometheus_client: (name, sorted
    label pairs) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(scrape(url))
        for s in fam.samples
    }


def rows_applied(url: str, view: str, loader: str = "kafka") -> float:
    """The process's count of rows its ``loader`` applied to ``view`` (the sample must exist:
    a missing loader is not zero rows)."""
    key = ("feature_serving_loader_rows_applied_total", (("loader", loader), ("view", view)))
    got = samples(url)
    assert key in got, sorted(k for k in got if k[0] == key[0])
    return got[key]
