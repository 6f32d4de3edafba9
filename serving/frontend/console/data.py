"""What the console's panels show, assembled from the process's own sources (the registry,
the core's serving counters, the loaders' figures, the keys file) and cut to the caller's
read scope: a key scoped to one view sees that view and nothing about the others, alike
whether they exist or not (as ``rust_core/src/scope.rs`` answers a serving request)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serving.errors import PermissionDeniedError
from serving.frontend.auth import ALL, ApiKey, Principal
from serving.registry import FeatureService, FeatureView, Registry


@dataclass(frozen=True)
class Visibility:
    """What one caller may see: every view and service (``everything``), or the views and
    services its key's read scope names (a service also when every view it spans is)."""

    everything: bool
    names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, principal: Principal | None) -> Visibility:
        """None: the frontend runs without keys (``--no-auth``), so nothing is hidden."""
        if principal is None or ALL in principal.key.read:
            return cls(True)
        return cls(False, frozenset(principal.key.read))

    def view(self, name: str) -> bool:
        return self.everything or name in self.names

    def service(self, registry: Registry, name: str) -> bool:
        if self.everything or name in self.names:
            return True
        svc = registry.feature_services.get(name)
        return svc is not None and all(self.view(r.view) for r in svc.features)

    def require_view(self, registry: Registry, name: str) -> FeatureView:
        """The view, or the same refusal for a view outside the scope as for a missing one."""
        if not self.view(name) or name not in registry.feature_views:
            if self.everything:
                registry.view(name)  # NotFoundError naming the view, with a suggestion
            raise PermissionDeniedError(f"this API key may not read feature view '{name}'")
        return registry.feature_views[name]


def view_json(v: FeatureView) -> dict[str, Any]:
    b, s = v.batch_source, v.stream_source
    return {
        "name": v.name,
        "description": v.description,
        "entities": list(v.entities),
        "join_keys": [{"name": k.name, "dtype": k.dtype} for k in v.join_keys],
        "features": [
            {"name": f.name, "dtype": f.dtype, "dim": f.dim, "description": f.description}
            for f in v.features
        ],
        "ttl_seconds": v.ttl_seconds,
        "online": v.online,
        "batch_source": None
        if b is None
        else {"type": b.type, "path": b.path, "timestamp_field": b.timestamp_field},
        "stream_source": None
        if s is None
        else {
            "type": s.type,
            "topic": s.topic,
            "bootstrap_servers": s.bootstrap_servers,
            "format": s.format,
            "group_id": s.group_id,
        },
        "push_source": v.push_source,
    }


def service_json(s: FeatureService) -> dict[str, Any]:
    return {
        "name": s.name,
        "description": s.description,
        "features": [str(r) for r in s.features],
        "views": sorted({r.view for r in s.features}),
    }


def registry_json(registry: Registry, seen: Visibility) -> dict[str, Any]:
    """The registry browser's data: what ``seen`` may read, and the entities those use."""
    views = [v for v in registry.feature_views.values() if seen.view(v.name)]
    services = [s for s in registry.feature_services.values() if seen.service(registry, s.name)]
    used = {e for v in views for e in v.entities}
    return {
        "project": registry.project,
        "entities": [
            {
                "name": e.name,
                "description": e.description,
                "join_keys": [{"name": k.name, "dtype": k.dtype} for k in e.join_keys],
            }
            for e in registry.entities.values()
            if seen.everything or e.name in used
        ],
        "feature_views": [view_json(v) for v in views],
        "feature_services": [service_json(s) for s in services],
        # on-demand views the caller may read (docs/on-demand.md): sources, request fields,
        # outputs, the transform and where it runs
        "on_demand_views": [
            {
                "name": o.name,
                "description": o.description,
                "kind": "write-time" if o.write_to_online_store else "request-time",
                "sources": [str(r) for r in o.sources],
                "request_fields": [{"name": f.name, "dtype": f.dtype} for f in o.request_fields],
                "features": [
                    {"name": f.name, "dtype": f.dtype, "dim": f.dim, "description": f.description}
                    for f in o.features
                ],
                "transform": o.transform,
                "mode": o.mode,
            }
            for o in registry.on_demand_views.values()
            if seen.view(o.name)
        ],
    }


def _loader_entries(
    loaders: list[dict[str, Any]], kind: str, view: str
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """A view's entry of the loaders of one kind, and the lag per partition of its topic."""
    for ld in loaders:
        if ld.get("loader") != kind or view not in ld.get("views", {}):
            continue
        entry = dict(ld["views"][view])
        topic = str(entry.get("topic", view))
        lag = {str(p): n for (t, p), n in sorted(ld.get("lag", {}).items()) if t == topic}
        return entry, lag
    return None, {}


def freshness_json(
    v: FeatureView,
    serving: Mapping[str, Any],
    loaders: list[dict[str, Any]],
    now: float | None = None,
) -> dict[str, Any]:
    """A view's live state: the newest event time served and its age against the TTL, the
    values served per status, and the batch and Kafka loaders' figures (those the metrics
    ``feature_serving_served_data_age_seconds``, ``_kafka_lag_messages``,
    ``_batch_watermark_timestamp_seconds`` ... carry)."""
    from serving.metrics import STATUS_NAMES

    now = time.time() if now is None else now
    stats = serving.get("views", {}).get(v.name, {})
    newest_us = stats.get("newest_event_ts") or 0
    newest = newest_us / 1e6 if newest_us else None
    age = None if newest is None else max(0.0, now - newest)
    if age is None:
        state = "no value served yet"
    elif v.ttl_seconds and age > v.ttl_seconds:
        state = "older than the TTL"
    else:
        state = "within the TTL" if v.ttl_seconds else "served (no TTL)"
    values = stats.get("values") or [0] * len(STATUS_NAMES)
    batch, _ = _loader_entries(loaders, "batch", v.name)
    kafka, lag = _loader_entries(loaders, "kafka", v.name)
    if kafka is not None:
        kafka["lag"] = lag
    return {
        "view": v.name,
        "now": now,
        "newest_event_time": newest,
        "age_seconds": age,
        "ttl_seconds": v.ttl_seconds,
        "state": state,
        "values_served": dict(zip(STATUS_NAMES[1:], values[1:], strict=True)),
        "batch": batch,
        "kafka": kafka,
    }


def key_json(k: ApiKey, last_used: float | None) -> dict[str, Any]:
    """A key as the admin panel lists it: never its secret nor its hash."""
    return {
        "key_id": k.key_id,
        "name": k.name,
        "read": list(k.read),
        "write": list(k.write),
        "admin": k.admin,
        "created_at": k.created_at or None,
        "expires_at": k.expires_at,
        "state": "revoked" if k.revoked else "expired" if k.expired() else "active",
        "last_used": last_used,
    }


def _view_changes(old: FeatureView, new: FeatureView) -> list[str]:
    out = []
    if old.ttl_seconds != new.ttl_seconds:
        out.append(f"ttl {old.ttl_seconds} s -> {new.ttl_seconds} s")
    if old.join_keys != new.join_keys:
        out.append(
            f"join keys {[k.name for k in old.join_keys]} -> {[k.name for k in new.join_keys]}"
        )
    before = {f.name: f for f in old.features}
    after = {f.name: f for f in new.features}
    for name in after.keys() - before.keys():
        out.append(f"+ feature {name} ({after[name].dtype})")
    for name in before.keys() - after.keys():
        out.append(f"- feature {name} ({before[name].dtype})")
    for name in before.keys() & after.keys():
        fa, fb = before[name], after[name]
        if (fa.dtype, fa.dim) != (fb.dtype, fb.dim):
            out.append(f"~ feature {name}: {fa.dtype} -> {fb.dtype}")
    changed: tuple[tuple[str, object, object], ...] = (
        ("batch source", old.batch_source, new.batch_source),
        ("stream source", old.stream_source, new.stream_source),
        ("push source", old.push_source, new.push_source),
        ("online", old.online, new.online),
    )
    for what, a, b in changed:
        if a != b:
            out.append(f"~ {what} changed")
    return sorted(out)


def registry_diff(old: Registry, new: Registry) -> list[str]:
    """What reloading ``new`` over ``old`` would change, a line per change (the store's
    ``apply_registry`` still decides whether a change is allowed without ``force``)."""
    out: list[str] = []
    for kind, a, b in (
        ("entity", old.entities, new.entities),
        ("feature view", old.feature_views, new.feature_views),
        ("feature service", old.feature_services, new.feature_services),
    ):
        for name in sorted(b.keys() - a.keys()):
            out.append(f"+ {kind} '{name}'")
        for name in sorted(a.keys() - b.keys()):
            out.append(f"- {kind} '{name}'")
    for name in sorted(old.feature_views.keys() & new.feature_views.keys()):
        out.extend(
            f"~ feature view '{name}': {c}"
            for c in _view_changes(old.feature_views[name], new.feature_views[name])
        )
    for name in sorted(old.feature_services.keys() & new.feature_services.keys()):
        a_refs = [str(r) for r in old.feature_services[name].features]
        b_refs = [str(r) for r in new.feature_services[name].features]
        if a_refs != b_refs:
            added = len(set(b_refs) - set(a_refs))
            removed = len(set(a_refs) - set(b_refs))
            out.append(f"~ feature service '{name}': +{added} / -{removed} features")
    return out
