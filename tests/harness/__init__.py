"""The test suite's harness: real processes on loopback and the means to drive them.

- :mod:`~tests.harness.server`: `serve` / `route` processes (:func:`start_server`,
  :func:`start_cli`, :func:`stop_server`, :class:`Servers`);
- :mod:`~tests.harness.broker`: the tansu Kafka-protocol broker (:class:`Broker`);
- :mod:`~tests.harness.cluster`: sharded nodes on a broker's topic (:class:`ShardedCluster`);
- :mod:`~tests.harness.cli`: one-shot CLI runs (:func:`run_cli`);
- :mod:`~tests.harness.feast`: the pinned Feast SDK's venv (:data:`FEAST_PY`, :func:`feast_env`);
- :mod:`~tests.harness.loading`: a store's Kafka loader run until caught up;
- :mod:`~tests.harness.http`, :mod:`~tests.harness.metrics`: calls and /metrics readings;
- :mod:`~tests.harness.ports`, :mod:`~tests.harness.polling`, :mod:`~tests.harness.procfs`;
- :mod:`~tests.harness.oidc`: a token issuer (RSA keys, its JWKS as a file and over HTTPS);
- :mod:`~tests.harness.registries`, :mod:`~tests.harness.profile`: shared registries and data;
- :mod:`~tests.harness.stores`: the type of the ``tmp_store`` fixture, copies of live stores.

Tests get processes through the fixtures of tests/conftest.py (``broker``, ``module_broker``,
``servers``) and import the rest from here (``from tests.harness import ...``). Nothing here
imports a test module.
"""

from tests.harness.broker import Broker, running_broker, tansu_binary
from tests.harness.cli import ingest_until_idle, run_cli, stopped_stats
from tests.harness.cluster import ShardedCluster
from tests.harness.feast import FEAST_PY, feast_env, require_feast_venv
from tests.harness.http import Outcome, http, post_whole
from tests.harness.loading import load_until_caught_up
from tests.harness.metrics import metric, rows_applied, samples, scrape
from tests.harness.paths import REGISTRIES, ROOT, TESTS
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.procfs import rss_bytes
from tests.harness.registries import TEST_REGISTRY, present, scale_out_registry
from tests.harness.server import Server, Servers, start_cli, start_server, stop_server
from tests.harness.stores import StoreFactory, copy_store

__all__ = [
    "FEAST_PY",
    "REGISTRIES",
    "ROOT",
    "TESTS",
    "TEST_REGISTRY",
    "Broker",
    "Outcome",
    "Server",
    "Servers",
    "ShardedCluster",
    "StoreFactory",
    "copy_store",
    "feast_env",
    "free_port",
    "http",
    "ingest_until_idle",
    "load_until_caught_up",
    "metric",
    "post_whole",
    "present",
    "require_feast_venv",
    "rows_applied",
    "rss_bytes",
    "run_cli",
    "running_broker",
    "samples",
    "scale_out_registry",
    "scrape",
    "start_cli",
    "start_server",
    "stop_server",
    "stopped_stats",
    "tansu_binary",
    "wait_until",
]
