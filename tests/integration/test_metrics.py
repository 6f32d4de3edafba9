"""Observability against real parts: a real serving process, its /metrics exposition checked with
prometheus_client's parser and `promtool check metrics`, a real Prometheus server scraping it
(with docs/ops/alerts.yml loaded), the names used by the dashboard and the alert rules, and the
JSON log lines of the process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving import Registry, Store
from serving.client import FeatureClient
from serving.sample import generate
from tests.harness import (
    ROOT,
    TEST_REGISTRY,
    Server,
    free_port,
    start_cli,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

N_USERS = 200
DASHBOARD = ROOT / "docs" / "ops" / "grafana-dashboard.json"
ALERTS = ROOT / "docs" / "ops" / "alerts.yml"
METRICS_PY = ROOT / "serving" / "metrics.py"
FEATURE_LOG_METRICS_PY = ROOT / "serving" / "feature_log" / "metrics.py"
#: metric families that only have samples when a Kafka loader runs in the server (none does in
#: these tests): they are checked against the names serving/metrics.py declares instead
LOADER_ONLY = frozenset(
    {
        "feature_serving_kafka_lag_messages",
        "feature_serving_loader_dead_letters",
        "feature_serving_kafka_misrouted_records",
        "feature_serving_kafka_seconds_since_broker_contact",
        # per on-demand view: samples once a transform ran (tests/integration/test_on_demand.py
        # checks them); this registry has no on-demand view
        "feature_serving_transform_duration_seconds",
        "feature_serving_transform_errors",
        # per logged feature service (serving/feature_log/metrics.py): samples once a service
        # is logged (tests/integration/test_feature_log.py checks them); none is logged here
        "feature_serving_feature_log_dropped_rows",
        "feature_serving_feature_log_write_errors",
        # samples once a caller's limit refused a request (tests/integration/test_limits.py
        # checks them); this server has no limits
        "feature_serving_limited_requests",
    }
)
#: families only a router (`feature-serving route`) exposes: checked against a router's /metrics
ROUTER_ONLY_PREFIX = "feature_serving_router_"
UNKNOWN_USER = 10**9

_ANCHOR = '    features: [{name: "f{000..199}", dtype: float32}]\n'


def _registry_text(sample_path: str) -> str:
    """TEST_REGISTRY with a Parquet batch source on user_profile (so the server's own
    materialize job sets the batch watermark and last-run metrics)."""
    assert _ANCHOR in TEST_REGISTRY
    return TEST_REGISTRY.replace(
        _ANCHOR, _ANCHOR + f"    batch_source: {{type: parquet, path: {sample_path}}}\n"
    )


@dataclass
class Env:
    server: Server
    tmp: Path


def _request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("metrics")
    sample = generate(tmp / "sample", N_USERS)
    config = tmp / "features.yaml"
    config.write_text(_registry_text(sample.user_profile_path))
    now = pa.scalar(int(time.time() * 1e6), type=pa.timestamp("us", tz="UTC"))
    old = pa.scalar(int((time.time() - 7200) * 1e6), type=pa.timestamp("us", tz="UTC"))
    with Store(tmp / "db", Registry.from_yaml(config)) as store:
        store.write(
            "item_stats",
            pa.table(
                {
                    "item_id": ["item-1", "item-old"],
                    "event_timestamp": pa.array([now, old]),
                    "ctr": pa.array([0.25, 0.5], type=pa.float32()),
                    "title": ["a", "b"],
                    "embedding": pa.array([[1.0, 2.0, 3.0], None], type=pa.list_(pa.float32(), 3)),
                }
            ),
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FS_LOG_FORMAT", raising=False)  # JSON logs, the default
        server = start_server(
            config, tmp / "db", tmp / "server.log", "--no-auth", "--slow-request-ms", "0.0001"
        )
    try:
        status, body = _request(
            "POST",
            server.url + "/admin/materialize",
            json.dumps({"views": ["user_profile"]}).encode(),
        )
        assert status == 200, body
        yield Env(server, tmp)
    finally:
        stop_server(server)


def scrape(server: Server) -> str:
    status, body = _request("GET", server.url + "/metrics")
    assert status == 200
    return body.decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by (name, labels)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    snap: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return snap.get((name, frozenset(labels.items())), 0.0)


def lookup(server: Server, features: list[str], entities: dict[str, list[Any]]) -> int:
    status, _ = server.post("/get-online-features", {"features": features, "entities": entities})
    return status


def test_counters_count_what_was_requested(env: Env) -> None:
    s = env.server
    before = samples(scrape(s))
    feats = ["user_profile:f000", "user_profile:f001"]
    # 3 valid lookups of 3 known users: 18 PRESENT values
    for _ in range(3):
        assert lookup(s, feats, {"user_id": [1, 2, 3]}) == 200
    # 2 lookups of 1 known + 2 unknown users: 4 PRESENT and 8 NOT_FOUND values
    for _ in range(2):
        assert lookup(s, feats, {"user_id": [4, UNKNOWN_USER, UNKNOWN_USER + 1]}) == 200
    # 1 lookup of a fresh and an expired item: 1 PRESENT, 1 OUTSIDE_MAX_AGE
    assert lookup(s, ["item_stats:ctr"], {"item_id": ["item-1", "item-old"]}) == 200
    # invalid: unknown view (404) and malformed JSON (400); neither reaches the value counters
    assert lookup(s, ["nope:f000"], {"user_id": [1]}) == 404
    assert s.post("/get-online-features", b"{not json")[0] == 400
    # one v1 HTTP lookup and one gRPC lookup: 2 + 1 PRESENT values
    assert s.post("/v1/feature-vector", {"features": feats, "entities": {"user_id": [5]}})[0] == 200
    with FeatureClient(f"127.0.0.1:{s.grpc}", timeout=5) as client:
        m = client.get_dense({"user_id": [6]}, ["user_profile:f000"])
        assert m.values.shape == (1, 1)
    after = samples(scrape(s))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    feast = {"api": "feast-http", "method": "get-online-features"}
    assert delta("feature_serving_requests_total", code="200", **feast) == 6
    assert delta("feature_serving_requests_total", code="404", **feast) == 1
    assert delta("feature_serving_requests_total", code="400", **feast) == 1
    assert (
        delta("feature_serving_requests_total", api="http", method="feature-vector", code="200")
        == 1
    )
    assert (
        delta("feature_serving_requests_total", api="grpc", method="GetFeatureVector", code="OK")
        == 1
    )
    assert delta("feature_serving_request_duration_seconds_count", code="200", **feast) == 6
    assert (
        delta("feature_serving_request_duration_seconds_bucket", code="200", le="+Inf", **feast)
        == 6
    )
    assert delta("feature_serving_rejected_requests_total", api="feast-http", reason="invalid") == 1
    values = "feature_serving_feature_values_total"
    assert delta(values, view="user_profile", status="PRESENT") == 18 + 4 + 2 + 1
    assert delta(values, view="user_profile", status="NOT_FOUND") == 8
    assert delta(values, view="user_profile", status="OUTSIDE_MAX_AGE") == 0
    assert delta(values, view="item_stats", status="PRESENT") == 1
    assert delta(values, view="item_stats", status="OUTSIDE_MAX_AGE") == 1
    # entities per request: one observation per answered lookup (6 + 1 + 1), 27 entities
    assert delta("feature_serving_request_entities_count") == 8
    assert delta("feature_serving_request_entities_sum") == 3 * 3 + 2 * 3 + 2 + 1 + 1
    assert delta("feature_serving_request_features_sum") == 5 * 2 + 1 + 2 + 1
    for api in ("feast-http", "http", "grpc"):
        assert value(after, "feature_serving_requests_in_flight", api=api) == 0
    # figures read on scrape
    assert value(after, "feature_serving_rocksdb_estimated_keys", view="user_profile") == N_USERS
    assert value(after, "feature_serving_view_ttl_seconds", view="item_stats") == 3600
    assert 0 < value(after, "feature_serving_served_data_age_seconds", view="item_stats") < 600
    assert (
        value(after, "feature_serving_batch_watermark_timestamp_seconds", view="user_profile") > 0
    )
    assert value(after, "feature_serving_hot_tier_budget_bytes") > 0
    assert (
        value(after, "feature_serving_hot_tier_hits_total")
        + value(after, "feature_serving_hot_tier_misses_total")
        > 0
    )
    build = [k for k in after if k[0] == "feature_serving_build_info"]
    assert len(build) == 1
    assert dict(build[0][1])["version"]


def test_promtool_check_metrics_accepts_the_exposition(env: Env) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package `prometheus` (make sysdeps)")
    lookup(env.server, ["user_profile:f000"], {"user_id": [1, UNKNOWN_USER]})
    text = scrape(env.server)
    r = subprocess.run(
        [promtool, "check", "metrics"],
        check=False,
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # promtool prints lint findings (naming, units, counters without _total) even with rc 0
    assert (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr


# -- names used by the dashboard and the rules ----------------------------------------------

_NAME = re.compile(r"\bfeature_serving_\w+")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum", ""),
    "info": ("_info",),
}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    exprs.extend(v["definition"] for v in dash["templating"]["list"] if v.get("definition"))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def exposed_names(text: str) -> tuple[set[str], set[str]]:
    """(series names with samples, series names of families declared without samples)."""
    with_samples: set[str] = set()
    empty: set[str] = set()
    for fam in text_string_to_metric_families(text):
        if fam.samples:
            with_samples.update(s.name for s in fam.samples)
        else:
            empty.update(fam.name + sfx for sfx in _SUFFIXES.get(fam.type, ("",)))
    return with_samples, empty


def family_of(series: str) -> str:
    for sfx in ("_total", "_bucket", "_count", "_sum", "_info"):
        if series.endswith(sfx):
            return series[: -len(sfx)]
    return series


def test_every_metric_in_dashboard_and_rules_is_exposed(env: Env) -> None:
    s = env.server
    lookup(s, ["user_profile:f000", "item_stats:ctr"], {"user_id": [1], "item_id": ["item-1"]})
    with_samples, empty = exposed_names(scrape(s))
    # a router in front of the node, for the router's own families
    cmap = env.tmp / "cluster.yaml"
    cmap.write_text(f"topic_partitions: 1\nshards:\n  0: ['127.0.0.1:{s.grpc}']\n")
    router = start_cli(
        ["route", "--config", str(env.tmp / "features.yaml"), "--cluster-map", str(cmap),
         "--no-auth"],
        env.tmp / "router.log",
    )  # fmt: skip
    try:
        assert lookup(router, ["user_profile:f000"], {"user_id": [1]}) == 200
        router_text = scrape(router)
        routed, routed_empty = exposed_names(router_text)
    finally:
        stop_server(router)
    assert any(n.startswith(ROUTER_ONLY_PREFIX) for n in routed), routed
    # readiness as a gauge on both (FeatureServingNotReady): node and router are ready here
    assert "\nfeature_serving_ready 1.0\n" in scrape(s)
    assert "\nfeature_serving_ready 1.0\n" in router_text
    declared = METRICS_PY.read_text() + FEATURE_LOG_METRICS_PY.read_text()
    used = {
        "dashboard": {n for e in dashboard_exprs() for n in _NAME.findall(e)},
        "alerts": {n for e in alert_exprs() for n in _NAME.findall(e)},
    }
    assert len(used["dashboard"]) >= 25, used
    assert len(used["alerts"]) >= 8, used
    for where, names in used.items():
        for name in sorted(names):
            if name.startswith(ROUTER_ONLY_PREFIX):
                assert name in routed or name in routed_empty, f"{where} uses {name}: not exposed"
                continue
            if name in with_samples:
                continue
            # The Kafka loader's families are declared (HELP / TYPE) but have no samples
            # without a Kafka loader; check them against the names serving/metrics.py declares.
            family = family_of(name)
            assert family in LOADER_ONLY, f"{where} uses {name}, absent from the exposition"
            assert name in empty, f"{where} uses {name}: wrong suffix for its type"
            short = family.removeprefix("feature_serving_")
            assert f'f"{{NS}}_{short}"' in declared, f"{name} is not declared in metrics.py"


def test_dashboard_is_importable_json_with_datasource_input() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    assert dash["id"] is None
    assert dash["uid"]
    assert dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("request rate", "latency", "error", "status", "hit ratio", "age", "kafka lag",
                  "store size"):  # fmt: skip
        assert topic in titles, topic
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


# -- a real Prometheus ----------------------------------------------------------------------


def _prom_get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else base + path
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _prom_value(base: str, query: str) -> float | None:
    body = _prom_get(base, "/api/v1/query", query=query)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def test_prometheus_scrapes_the_service(env: Env, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus not found: install the Debian package `prometheus` (make sysdeps)")
    s = env.server
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # the rule files are copied: Prometheus resolves rule_files relative to its config
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [
                    {
                        "job_name": "feature-serving",
                        "scrape_interval": "1s",
                        "static_configs": [{"targets": [f"127.0.0.1:{s.http}"]}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=1) as r:
                    return r.status == 200
            except (urllib.error.URLError, ConnectionError):
                return False

        _wait(ready, 15, "Prometheus ready")
        _wait(lambda: _prom_value(base, 'up{job="feature-serving"}') == 1, 10, "first scrape")

        # requests after the first scrape: Prometheus must see the counters move
        feats = ["user_profile:f000", "user_profile:f001", "user_profile:f002"]
        for _ in range(4):
            assert lookup(s, feats, {"user_id": [7, UNKNOWN_USER]}) == 200
        requests_q = (
            'sum(feature_serving_requests_total{job="feature-serving",api="feast-http",'
            'method="get-online-features",code="200"})'
        )
        not_found_q = (
            'feature_serving_feature_values_total{job="feature-serving",view="user_profile",'
            'status="NOT_FOUND"}'
        )
        # no more requests from here on: Prometheus converges on what the service exposes now
        now = samples(scrape(s))
        want_requests = value(
            now, "feature_serving_requests_total",
            api="feast-http", method="get-online-features", code="200",
        )  # fmt: skip
        want_not_found = value(
            now, "feature_serving_feature_values_total", view="user_profile", status="NOT_FOUND"
        )
        assert want_requests >= 4
        assert want_not_found >= 4 * 3
        _wait(lambda: _prom_value(base, requests_q) == want_requests, 10, requests_q)
        _wait(lambda: _prom_value(base, not_found_q) == want_not_found, 10, not_found_q)

        # every dashboard query is valid PromQL for Prometheus (template variables filled in)
        for expr in dashboard_exprs():
            if expr.startswith("label_values("):
                continue
            q = (
                expr.replace("$__rate_interval", "1m")
                .replace("$job", "feature-serving")
                .replace("$instance", ".*")
                .replace("$view", ".*")
            )
            body = _prom_get(base, "/api/v1/query", query=q)
            assert body["status"] == "success", (expr, body)

        # the alert rules load and evaluate against the real series without errors
        def evaluated() -> list[dict[str, Any]] | None:
            rules = [
                r for g in _prom_get(base, "/api/v1/rules")["data"]["groups"] for r in g["rules"]
            ]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None

        rules = _wait(evaluated, 10, "rule evaluation")
        assert len(rules) == len(alert_exprs())
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, bad
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- logs -----------------------------------------------------------------------------------


def test_server_logs_are_json_lines_with_request_fields(env: Env) -> None:
    s = env.server
    status, _ = _request(
        "POST",
        s.url + "/get-online-features",
        json.dumps({"features": ["user_profile:f000"], "entities": {"user_id": [1]}}).encode(),
    )
    assert status == 200
    req = urllib.request.Request(
        s.url + "/get-online-features",
        data=json.dumps({"features": ["user_profile:f000"], "entities": {"user_id": [2]}}).encode(),
        headers={"Content-Type": "application/json", "X-Request-Id": "test-req-42"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200

    def slow_lines() -> list[dict[str, Any]]:
        lines = [ln for ln in s.log.read_text().splitlines() if ln.strip()]
        records = [json.loads(ln) for ln in lines]  # every line is one JSON object
        for rec in records:
            assert isinstance(rec, dict)
            assert {"ts", "level", "logger", "msg"} <= rec.keys(), rec
        return [r for r in records if r["msg"] == "slow request"]

    slow = _wait(
        lambda: [r for r in slow_lines() if r.get("request_id") == "test-req-42"],
        5, "the slow-request line",
    )  # fmt: skip
    rec = slow[0]
    assert rec["level"] == "WARNING"
    assert rec["logger"] == "serving.server"
    assert rec["api"] == "feast-http"
    assert rec["method"] == "get-online-features"
    assert rec["code"] == "200"
    assert isinstance(rec["duration_ms"], float)
    assert rec["duration_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"])
    # a request without X-Request-Id gets a generated id
    assert all(r.get("request_id") for r in slow_lines())
