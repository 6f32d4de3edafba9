"""The console's history sampler and charts, on real metrics objects: deltas between samples,
quantiles as Prometheus computes them, the registry diff a reload preview shows."""

from __future__ import annotations

from serving.frontend.console import svg
from serving.frontend.console.data import registry_diff
from serving.frontend.console.history import QUALITY_STATUSES, History, quantile
from serving.metrics import LATENCY_BUCKETS, ServingMetrics
from serving.registry import Registry

REG = """
project: p
entities: [{name: user, join_keys: [{name: user_id, dtype: int64}]}]
feature_views:
  - {name: a, entities: [user], ttl: 60, features: [{name: x, dtype: float32}]}
  - {name: b, entities: [user], features: [{name: y, dtype: int64}]}
feature_services:
  - {name: s, features: ["a:x"]}
"""


def test_quantile_interpolates_inside_the_bucket() -> None:
    # 10 observations in (0.0001, 0.00025]: the median is half way through that bucket
    counts = [0.0] * (len(LATENCY_BUCKETS) + 1)
    counts[1] = 10
    assert abs((quantile(LATENCY_BUCKETS, counts, 0.5) or 0) - 0.000175) < 1e-9
    assert quantile(LATENCY_BUCKETS, [0.0] * len(counts), 0.5) is None


def test_samples_keep_differences_and_rates() -> None:
    metrics = ServingMetrics()
    now = [1000.0]
    values = {"a": [0, 5, 0, 1, 0]}
    h = History(metrics, lambda: values, interval=5, points=3, clock=lambda: now[0])
    h.sample()  # the baseline
    assert not h.samples
    for _ in range(10):
        metrics.observe("http", "feature-vector", "200", 0.0003)
    values["a"] = [0, 15, 0, 3, 2]
    now[0] += 5
    h.sample()
    (s,) = h.samples
    assert s.quality["a"] == (10, 0, 2, 2)  # PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE
    assert s.apis["http"].requests == 10
    assert s.apis["http"].rate == 2.0
    assert 0.00025 < (s.apis["http"].p50 or 0) <= 0.0005
    for _ in range(3):
        now[0] += 5
        h.sample()
    assert len(h.samples) == 3  # only `points` kept
    assert h.samples[-1].quality["a"] == (0, 0, 0, 0)
    assert set(h.to_json(["b"])["quality"]) == {"b"}


def test_charts_draw_what_was_sampled() -> None:
    chart = svg.quality_chart("q", QUALITY_STATUSES, [(1.0, (3, 0, 1, 0)), (6.0, (0, 0, 0, 0))])
    assert chart.count('data-status="PRESENT"') == 1
    assert chart.count('data-status="NOT_FOUND"') == 1
    assert "75.0 %" in chart
    assert "no value" in svg.quality_chart("q", QUALITY_STATUSES, [(1.0, (0, 0, 0, 0))])
    lines = svg.line_chart("r", "/s", [1.0, 6.0, 11.0], [("http", [1.0, None, 3.0])])
    assert 'data-series="http"' not in lines  # a gap leaves two single points, no line
    assert lines.count("<circle") == 2
    assert "<script" not in lines + chart


def test_registry_diff_names_each_change() -> None:
    old = Registry.from_yaml_text(REG)
    new = Registry.from_yaml_text(
        REG.replace("ttl: 60", "ttl: 120")
        .replace("[{name: y, dtype: int64}]", "[{name: y, dtype: int64}, {name: z, dtype: bool}]")
        .replace('["a:x"]', '["a:x", "b:y"]')
    )
    assert registry_diff(old, new) == [
        "~ feature view 'a': ttl 60 s -> 120 s",
        "~ feature view 'b': + feature z (bool)",
        "~ feature service 's': +1 / -0 features",
    ]
    assert registry_diff(old, old) == []
