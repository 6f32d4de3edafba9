"""The web console (/ui) in a real browser (Debian's headless Chromium via Selenium) against
real server processes: the demo's registry, freshness after a push, the try-it panel against
the HTTP API, scopes, the admin panel, and a router's cluster page with a replica going down.
Every page's screenshot is saved under the test's temporary directory, and every page must
leave no console error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from serving import Registry
from serving.loaders.kafka import encode_key, produce_rows
from serving.sample import generate
from serving.sharding import shard_for_key
from tests.harness import scale_out_registry
from tests.harness.broker import Broker
from tests.harness.browser import Browser, chromium
from tests.harness.paths import ROOT
from tests.harness.polling import wait_until
from tests.harness.server import Server, Servers, start_cli, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Demo:
    """`feature-serving demo` on the sample, as `make run` starts it, plus two more keys."""

    server: Server
    config: Path
    keys_file: Path
    admin_key: str
    scoped_key: str
    writer_key: str

    @property
    def url(self) -> str:
        return self.server.url


def _create_key(keys_file: Path, name: str, *flags: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "serving", "keys", "create", "--name", name,
         "--keys-file", str(keys_file), *flags],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return out.stdout.split()[0]


def _start_demo(tmp: Path, *flags: str) -> Demo:
    config = tmp / "features.yaml"
    shutil.copy(ROOT / "features.yaml", config)
    generate(tmp / ".data" / "sample", 300)
    data = tmp / "store"
    server = start_cli(
        ["demo", "--config", str(config), "--data-dir", str(data), *flags], tmp / "demo.log"
    )
    keys_file = Path(f"{data}.keys.json")
    admin_key = Path(f"{keys_file}.demo-token").read_text().strip()
    scoped = _create_key(keys_file, "scoped", "--read", "item_stats")
    writer = _create_key(keys_file, "writer", "--read", "*", "--write", "user_item")
    return Demo(server, config, keys_file, admin_key, scoped, writer)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    d = _start_demo(tmp_path_factory.mktemp("console-demo"))
    try:
        yield d
    finally:
        stop_server(d.server)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with chromium(tmp_path) as b:
        yield b


def _get(url: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _post(url: str, body: Any, key: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _rows(b: Browser, selector: str, attr: str) -> set[str]:
    return {str(e.get_attribute(attr)) for e in b.css(selector) if e.is_displayed()}


def test_page_and_headers_need_no_key_but_data_does(demo: Demo) -> None:
    status, headers, body = _get(demo.url + "/ui/")
    assert status == 200
    assert b"console.js" in body
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    # the page holds no data, the API does: without a key, 401
    status, _, _ = _get(demo.url + "/ui/api/registry")
    assert status == 401
    status, _, _ = _get(demo.url + "/ui/api/registry", "fsk_00000000_notakey")
    assert status == 401
    # `/` sends a person to the console instead of a 401
    status, _, body = _get(demo.url + "/")
    assert status == 200
    assert b"console.js" in body


def test_demo_prints_the_console_url_with_its_key(demo: Demo, browser: Browser) -> None:
    lines = [ln for ln in demo.server.log.read_text().splitlines() if "Web console:" in ln]
    assert lines, demo.server.log.read_text()
    url = lines[0].split("Web console:", 1)[1].strip()
    assert url == f"{demo.url}/ui/#key={demo.admin_key}"
    browser.open(url)
    browser.wait_css("#views tr[data-view]")
    # signed in, and the key is out of the address bar
    assert demo.admin_key not in browser.driver.current_url
    assert "key demo (admin)" in browser.wait_css("#who").text
    browser.assert_no_console_errors()


def test_registry_lists_every_demo_view(demo: Demo, browser: Browser) -> None:
    registry = Registry.from_yaml(demo.config)
    browser.sign_in(demo.url, demo.admin_key)
    browser.wait_css("#views tr[data-view]")
    assert _rows(browser, "#views tr[data-view]", "data-view") == set(registry.feature_views)
    assert _rows(browser, "#services tr[data-service]", "data-service") == set(
        registry.feature_services
    )
    assert _rows(browser, "#entities tr[data-entity]", "data-entity") == set(registry.entities)
    # the demo's on-demand views (docs/on-demand.md), request-time and write-time
    assert registry.on_demand_views
    assert _rows(browser, "tr[data-on-demand-view]", "data-on-demand-view") == set(
        registry.on_demand_views
    )
    browser.screenshot("registry")
    # searchable: a feature's description finds its view
    browser.wait_css("#search").send_keys("ISO 3166")
    browser.wait_for(
        lambda: _rows(browser, "#views tr[data-view]", "data-view") == {"user_account"},
        "search for a feature description shows its view only",
    )
    browser.screenshot("registry-search")
    browser.assert_no_console_errors()


def _newest(b: Browser) -> str:
    return str(b.wait_css("#newest-event-time").text)


def test_view_page_freshness_changes_after_a_push(demo: Demo, browser: Browser) -> None:
    browser.sign_in(demo.url, demo.admin_key)
    browser.go(demo.url, "#/view/user_item")
    assert _newest(browser) == "—"  # nothing of user_item was served yet
    assert "no value served yet" in browser.wait_css("#freshness-state").text
    browser.screenshot("view-before-push")
    pushed = datetime.now(UTC).replace(microsecond=0)
    stamp = pushed.strftime("%Y-%m-%dT%H:%M:%SZ")
    status, answer = _post(
        demo.url + "/v1/push",
        {
            "feature_view": "user_item",
            "rows": {
                "user_id": [7],
                "item_id": ["item-0007"],
                "event_timestamp": [stamp.replace("Z", "+0000")],
                "affinity": [0.25],
                "last_click_ts": [stamp.replace("Z", "+0000")],
            },
        },
        demo.writer_key,
    )
    assert status == 200, answer
    assert answer["written"] == 1, answer
    # the view shows the newest event time *served*: read the pushed row once
    status, _ = _post(
        demo.url + "/get-online-features",
        {
            "features": ["user_item:affinity"],
            "entities": {"user_id": [7], "item_id": ["item-0007"]},
        },
        demo.admin_key,
    )
    assert status == 200
    browser.wait_css("#refresh").click()
    browser.wait_for(lambda: _newest(browser) == stamp, "the pushed event time on the view page")
    assert "PRESENT 1" in browser.wait_css("#values-served").text
    assert "older than the TTL" not in browser.wait_css("#freshness-state").text
    shot = browser.screenshot("view-after-push")
    # the README's picture of the console: `FS_CONSOLE_README_SHOT=docs/console.png pytest ...`
    if target := os.environ.get("FS_CONSOLE_README_SHOT"):
        shutil.copy(shot, ROOT / target)
    browser.assert_no_console_errors()


def test_view_page_shows_the_kafka_loaders_figures(
    broker: Broker, tmp_path: Path, servers: Servers, browser: Browser
) -> None:
    config = tmp_path / "features.yaml"
    config.write_text(scale_out_registry(broker.bootstrap))
    broker.create_topic("users", 2)
    view = Registry.from_yaml(config).view("users")
    produce_rows(
        broker.producer(), view,
        [{"user_id": u, "event_timestamp": 1_000, "seq": 1} for u in range(40)],
    )  # fmt: skip
    node = servers.serve(config, "node", "--no-auth", "--max-ready-lag", "0")
    browser.open(node.url + "/ui/#/view/users")
    browser.wait_css("#freshness")

    def shows_caught_up() -> bool:
        browser.wait_css("#refresh").click()
        kafka = " ".join(browser.wait_css("#kafka").text.split())
        return "rows written 40" in kafka and "p0: 0" in kafka and "p1: 0" in kafka

    browser.wait_for(shows_caught_up, "the loader's rows and lag per partition")
    assert "Kafka (topic users)" in browser.wait_css("#freshness").text
    assert "seconds since broker contact" in browser.wait_css("#kafka").text
    browser.screenshot("view-kafka")
    browser.assert_no_console_errors()


def test_try_it_answers_what_the_http_api_answers(demo: Demo, browser: Browser) -> None:
    features = ["user_account:country", "user_account:age", "user_profile:f000"]
    users = [1, 2, 10**9]
    browser.sign_in(demo.url, demo.admin_key)
    browser.go(demo.url, "#/try")
    box = browser.wait_css("#try-features")
    box.clear()
    box.send_keys("\n".join(features))
    browser.wait_css("#try-service").click()  # leaves the text area: the key inputs follow it
    key = browser.wait_css("#try-key-user_id")
    key.clear()
    key.send_keys(", ".join(map(str, users)))
    browser.wait_css("#try-run").click()
    browser.wait_css("#try-result td")
    request = {"features": features, "entities": {"user_id": users}}
    status, answer = _post(demo.url + "/get-online-features", request, demo.admin_key)
    assert status == 200
    names = answer["metadata"]["feature_names"]
    for j, (name, col) in enumerate(zip(names, answer["results"], strict=True)):
        for i, value in enumerate(col["values"]):
            expected = "null" if value is None else str(value)
            cell = browser.css("#try-result tbody tr")[i].find_elements("css selector", "td")[j]
            assert cell.text == expected, (name, i)
            assert cell.get_attribute("title") == col["statuses"][i]
    browser.screenshot("try-it")
    curl = browser.wait_css("#snippet-curl").text
    python = browser.wait_css("#snippet-python").text
    feast = browser.wait_css("#snippet-feast").text
    # no secret in the snippets: the key is an environment variable
    assert demo.admin_key not in curl + python + feast
    assert "FeatureClient(" in python
    assert "get_online_features(" in feast
    # the curl snippet, run as shown, gets the same answer
    out = subprocess.run(
        ["bash", "-c", curl], capture_output=True, text=True, check=True,
        env={**os.environ, "FEATURE_SERVING_API_KEY": demo.admin_key},
    )  # fmt: skip
    assert json.loads(out.stdout) == answer
    # and the Python client snippet runs as shown
    out = subprocess.run(
        [sys.executable, "-c", python], capture_output=True, text=True, check=False, cwd=ROOT,
        env={**os.environ, "FEATURE_SERVING_API_KEY": demo.admin_key},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "'user_account:country': ['BR', 'CA', '']" in out.stdout, out.stdout
    browser.assert_no_console_errors()


def test_quality_page_charts_the_sampled_history(demo: Demo, browser: Browser) -> None:
    body = {"features": ["user_profile:f000"], "entities": {"user_id": [1, 2, 10**9]}}
    base = demo.url + "/ui/api"

    def sampled() -> bool:
        # requests go on until a sample holds some: the sampler runs on its own timer
        assert _post(demo.url + "/get-online-features", body, demo.admin_key)[0] == 200
        history = json.loads(_get(base + "/history", demo.admin_key)[2])
        return any(p["values"][0] for p in history["quality"]["user_profile"]) and any(
            p["p99"] is not None for p in history["apis"].get("feast-http", [])
        )

    wait_until(sampled, 60, "a history sample with user_profile values and feast-http latency")
    browser.sign_in(demo.url, demo.admin_key)
    browser.go(demo.url, "#/quality")
    quality = browser.wait_css('[data-chart="/ui/api/charts/quality/user_profile.svg"]')
    statuses = {
        str(r.get_attribute("data-status")) for r in quality.find_elements("css selector", "rect")
    }
    assert {"PRESENT", "NOT_FOUND"} <= statuses
    latency = browser.wait_css('[data-chart="/ui/api/charts/latency.svg"]')
    assert "feast-http p99" in latency.text
    assert latency.find_elements("css selector", "polyline, circle")
    browser.screenshot("quality")
    browser.assert_no_console_errors()


def test_scoped_key_sees_only_its_views_and_no_admin_panel(demo: Demo, browser: Browser) -> None:
    browser.sign_in(demo.url, demo.scoped_key)
    browser.wait_css("#views tr[data-view]")
    assert _rows(browser, "#views tr[data-view]", "data-view") == {"item_stats"}
    assert not browser.css("#services tr[data-service]")  # every service spans other views
    assert _rows(browser, "#entities tr[data-entity]", "data-entity") == {"item"}
    assert not browser.css("#nav-admin")
    browser.screenshot("scoped-registry")
    browser.go(demo.url, "#/admin")
    assert "needs an admin key" in browser.wait_css("#admin-refused").text
    browser.screenshot("scoped-admin-refused")
    browser.go(demo.url, "#/quality")
    browser.wait_css("[data-chart]")
    charts = {str(e.get_attribute("data-chart")) for e in browser.css("[data-chart]")}
    assert "/ui/api/charts/quality/item_stats.svg" in charts
    assert not any("user_profile" in c for c in charts)
    browser.screenshot("scoped-quality")
    browser.assert_no_console_errors()
    # and the server refuses what the page does not offer, alike for hidden and missing views
    base, key = demo.url + "/ui/api", demo.scoped_key
    for path in ("/admin/keys", "/admin/reload-preview"):
        assert _get(base + path, key)[0] == 403, path
    hidden = _get(base + "/views/user_profile", key)
    missing = _get(base + "/views/no_such_view", key)
    assert hidden[0] == missing[0] == 403
    assert b"user_profile" in hidden[2]
    assert b"no_such_view" in missing[2]
    assert _get(base + "/charts/quality/user_profile.svg", key)[0] == 403
    history = json.loads(_get(base + "/history", key)[2])
    assert set(history["quality"]) == {"item_stats"}
    status, _ = _post(
        base + "/snippets",
        {"features": ["user_profile:f000"], "entities": {"user_id": [1]}},
        key,
    )
    assert status == 403


def test_admin_panel_lists_keys_without_secrets_and_previews_a_reload(
    tmp_path: Path, browser: Browser
) -> None:
    d = _start_demo(tmp_path, "--prometheus-url", "http://prometheus.example:9090")
    try:
        # with a Prometheus configured, the quality page links to it
        browser.sign_in(d.url, d.admin_key)
        browser.go(d.url, "#/quality")
        link = browser.wait_css("#prometheus-link")
        assert link.get_attribute("href") == "http://prometheus.example:9090/"
        # a key used once shows a last use (sampled every few seconds)
        assert (
            _post(
                d.url + "/get-online-features",
                {"features": ["item_stats:ctr"], "entities": {"item_id": ["item-0001"]}},
                d.scoped_key,
            )[0]
            == 200
        )
        browser.sign_in(d.url, d.admin_key)
        browser.go(d.url, "#/admin")
        browser.wait_css("#keys tr[data-key]")
        assert _rows(browser, "#keys tr[data-key]", "data-key") == {"demo", "scoped", "writer"}
        page = browser.driver.page_source
        stored = json.loads(d.keys_file.read_text())["keys"]
        for secret in (d.admin_key, d.scoped_key, d.writer_key, *(k["sha256"] for k in stored)):
            assert secret not in page

        def scoped_used() -> bool:
            browser.driver.refresh()
            row = browser.wait_css('#keys tr[data-key="scoped"]')
            return "not since start" not in row.text

        browser.wait_for(scoped_used, "the scoped key's last use")
        browser.screenshot("admin-keys")
        # a registry change: one feature more on item_stats
        text = d.config.read_text().replace(
            "      - {name: category, dtype: string}\n",
            "      - {name: category, dtype: string}\n      - {name: rank, dtype: int64}\n",
        )
        d.config.write_text(text)
        browser.wait_css("#reload-preview").click()
        changes = browser.wait_css("#reload-changes").text
        assert "feature view 'item_stats': + feature rank (int64)" in changes
        browser.screenshot("admin-reload-preview")
        browser.wait_css("#reload-apply").click()
        browser.wait_css("#reload-done")
        status, _, body = _get(d.url + "/ui/api/views/item_stats", d.admin_key)
        assert status == 200
        assert "rank" in [f["name"] for f in json.loads(body)["view"]["features"]]
        browser.assert_no_console_errors()
    finally:
        stop_server(d.server)


ROUTED_REGISTRY = """
project: routed
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: seq, dtype: int64}]
    # never contacted: the nodes run with --no-ingest
    stream_source: {type: kafka, topic: users, bootstrap_servers: "127.0.0.1:9", format: json}
"""


def test_router_cluster_page_shows_a_replica_going_down(
    tmp_path: Path, servers: Servers, browser: Browser
) -> None:
    config = tmp_path / "features.yaml"
    config.write_text(ROUTED_REGISTRY)
    a = servers.serve(config, "a", "--no-auth", "--no-ingest")
    a2 = servers.serve(config, "a2", "--no-auth", "--no-ingest")
    b = servers.serve(config, "b", "--no-auth", "--no-ingest")
    cmap = tmp_path / "cluster.yaml"
    cmap.write_text(
        "topic_partitions: 4\nshards:\n"
        f"  0: ['127.0.0.1:{a.grpc}', '127.0.0.1:{a2.grpc}']\n  1: ['127.0.0.1:{b.grpc}']\n"
    )
    router = servers.cli(
        ["route", "--config", str(config), "--cluster-map", str(cmap), "--no-auth"], "router"
    )
    browser.open(router.url + "/ui/#/cluster")
    browser.wait_css("tr[data-replica]")
    down = f"127.0.0.1:{a2.grpc}"

    def ready(endpoint: str) -> str:
        cell = browser.wait_css(f'tr[data-replica="{endpoint}"] td[data-ready]')
        return str(cell.get_attribute("data-ready"))

    assert {ready(f"127.0.0.1:{s.grpc}") for s in (a, a2, b)} == {"yes"}
    browser.screenshot("cluster-all-ready")
    # which shard owns an entity: the same as the nodes' ownership rule
    view = Registry.from_yaml(config).view("users")
    browser.wait_css("#owner-key").send_keys("42")
    browser.wait_css("#owner-run").click()
    owner = shard_for_key(encode_key(view, [42]), 4, 2)
    browser.wait_for(
        lambda: f"shard {owner}" in browser.wait_css("#owner-answer").text, "the owner of 42"
    )
    servers.stop(a2)

    def shows_down() -> bool:
        browser.wait_css("#refresh").click()
        return ready(down) == "no"

    browser.wait_for(shows_down, "the stopped replica shown not ready")
    row = browser.wait_css(f'tr[data-replica="{down}"]').text
    assert "unreachable" in row
    browser.screenshot("cluster-replica-down")
    # the router's registry browser and try-it panel work too
    browser.go(router.url, "#/registry")
    browser.wait_css('#views tr[data-view="users"]')
    browser.assert_no_console_errors()
    # a router has no view freshness of its own, and a node no cluster page
    assert _get(a.url + "/ui/api/cluster")[0] == 404


def test_router_console_with_keys_asks_the_nodes_with_the_callers_key(
    tmp_path: Path, servers: Servers, browser: Browser
) -> None:
    config = tmp_path / "features.yaml"
    config.write_text(
        ROUTED_REGISTRY
        + "  - {name: other, entities: [user], features: [{name: z, dtype: int64}]}\n"
    )
    keys = tmp_path / "keys.json"
    admin = _create_key(keys, "ops", "--read", "*", "--admin")
    scoped = _create_key(keys, "team", "--config", str(config), "--read", "users")
    node = servers.serve(config, "node", "--no-ingest", "--keys-file", str(keys))
    cmap = tmp_path / "cluster.yaml"
    cmap.write_text(f"topic_partitions: 2\nshards:\n  0: ['127.0.0.1:{node.grpc}']\n")
    router = servers.cli(
        ["route", "--config", str(config), "--cluster-map", str(cmap), "--keys-file", str(keys)],
        "router",
    )
    browser.sign_in(router.url, admin)
    browser.go(router.url, "#/cluster")
    row = browser.wait_css(f'tr[data-replica="127.0.0.1:{node.grpc}"]').text
    # the node answered GetNodeInfo to the caller's key, forwarded by the router
    assert "unreachable" not in row
    assert "ready, v" in row
    browser.screenshot("router-cluster-with-keys")
    browser.sign_in(router.url, scoped)
    browser.wait_css("#views tr[data-view]")
    assert _rows(browser, "#views tr[data-view]", "data-view") == {"users"}
    assert not browser.css("#nav-admin")
    browser.assert_no_console_errors()
    assert _get(router.url + "/ui/api/admin/keys", scoped)[0] == 403
    assert _get(router.url + "/ui/api/views/other", scoped)[0] == 403
    assert _get(router.url + "/ui/api/cluster/owner?view=other&key=1", scoped)[0] == 403
