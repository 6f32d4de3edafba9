"""The console's routes on a frontend's HTTP port: the page and its static files (no data,
answered without a key so that the page can ask for one), and ``/ui/api/...``, which the API
key middleware guards like every other route and which answers only what the caller's key
may read.

Every ``/ui`` answer carries a CSP that allows this origin's scripts, styles and fetches
only (nothing inline, no other host: the page works on a network without internet) and
forbids framing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import grpc
from aiohttp import web

from serving._proto.feature_serving.v1 import feature_service_pb2 as pb
from serving.client.keys import encode_entity_keys
from serving.cluster.channels import ClusterChannels
from serving.cluster.map import ClusterMap, NodeInfo
from serving.cluster.rpc import NODE_INFO_METHOD
from serving.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from serving.frontend.base import Frontend
from serving.frontend.console import data, svg
from serving.frontend.console.history import QUALITY_STATUSES, History
from serving.frontend.console.snippets import parse_try, snippets
from serving.frontend.endpoints import CONSOLE_PATH, CONSOLE_STATIC_PREFIX
from serving.registry import Registry

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
SVG = "image/svg+xml"


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page and its static files, read once (they ship inside the package)."""
    root = resources.files("serving.frontend.console").joinpath("static")
    out = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        ctype = "text/html" if suffix == ".html" else _STATIC_TYPES.get(suffix)
        if ctype is not None:
            out[entry.name] = (entry.read_bytes(), ctype)
    return out


@dataclass(frozen=True)
class NodeFacts:
    """What a node's console reads beyond the frontend: the core's serving counters and the
    loaders' figures (the sources of the node's metrics)."""

    serving_stats: Callable[[], Mapping[str, Any]]
    loader_stats: Callable[[], list[dict[str, Any]]]
    reload_path: str = "/admin/registry/reload"


@dataclass(frozen=True)
class RouterFacts:
    """What a router's console reads: the cluster map, its replica health checks, and a
    replica's GetNodeInfo asked with the caller's own key (None: no answer, with why)."""

    cluster: Callable[[], ClusterMap]
    replica_ready: Callable[[], Mapping[str, bool]]
    node_info: Callable[[str, str | None], Awaitable[NodeInfo | str]]
    reload_path: str = "/admin/reload"


class Console:
    """The console of one frontend (a node with :class:`NodeFacts`, a router with
    :class:`RouterFacts`): :meth:`install` adds its routes and its history sampler."""

    def __init__(self, frontend: Frontend, facts: NodeFacts | RouterFacts) -> None:
        self.frontend = frontend
        self.facts = facts
        auth = frontend.auth
        quality = None
        if isinstance(facts, NodeFacts):
            serving_stats = facts.serving_stats

            def quality() -> dict[str, list[int]]:
                return {v: s["values"] for v, s in serving_stats()["views"].items()}

        self.history = History(
            frontend.metrics, quality, on_sample=None if auth is None else auth.note_uses
        )
        self._static = _static_files()
        page, _ = self._static["index.html"]
        # the page says only whether to ask for a key and which tabs a router has
        self._page_html = (
            page.decode()
            .replace("{{role}}", self.role)
            .replace("{{auth}}", "on" if auth is not None else "off")
            .encode()
        )

    @property
    def role(self) -> str:
        return "node" if isinstance(self.facts, NodeFacts) else "router"

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self._root)
        r.add_get(CONSOLE_PATH, self._page)
        r.add_get(CONSOLE_PATH + "/", self._page)
        r.add_get(CONSOLE_STATIC_PREFIX + "{name}", self._static_file)
        api = CONSOLE_PATH + "/api"
        r.add_get(api + "/whoami", self._whoami)
        r.add_get(api + "/registry", self._registry)
        r.add_get(api + "/views/{name}", self._view)
        r.add_get(api + "/history", self._history)
        r.add_get(api + "/charts/quality/{view}.svg", self._quality_chart)
        r.add_get(api + "/charts/requests.svg", self._requests_chart)
        r.add_get(api + "/charts/latency.svg", self._latency_chart)
        r.add_post(api + "/snippets", self._snippets)
        r.add_get(api + "/cluster", self._cluster)
        r.add_get(api + "/cluster/owner", self._owner)
        r.add_get(api + "/admin/keys", self._keys)
        r.add_get(api + "/admin/reload-preview", self._reload_preview)
        app.on_response_prepare.append(_security_headers)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    async def _start(self, _app: web.Application) -> None:
        self.history.start()

    async def _stop(self, _app: web.Application) -> None:
        await self.history.stop()

    # -- helpers ---------------------------------------------------------------------------

    def _seen(self, request: web.Request) -> data.Visibility:
        return data.Visibility.of(self.frontend._principal(request))

    @property
    def _registry_now(self) -> Registry:
        return self.frontend.registry

    # -- the page --------------------------------------------------------------------------

    async def _root(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound(CONSOLE_PATH + "/")

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._page_html, content_type="text/html", charset="utf-8")

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in self._static:
            raise NotFoundError(f"no console file '{name}'")
        body, ctype = self._static[name]
        return web.Response(body=body, content_type=ctype, charset="utf-8")

    # -- data ------------------------------------------------------------------------------

    async def _whoami(self, request: web.Request) -> web.Response:
        p = self.frontend._principal(request)
        settings = self.frontend.settings
        return web.json_response(
            {
                "role": self.role,
                "auth": self.frontend.auth is not None,
                "key": None
                if p is None
                else {
                    "name": p.key.name,
                    "read": list(p.key.read),
                    "admin": p.key.admin,
                    "role": p.role,
                    "kind": p.kind,
                },
                "admin": p is None or p.key.admin,
                "prometheus_url": settings.prometheus_url or None,
                "project": self._registry_now.project,
                "sample_seconds": self.history.interval,
            }
        )

    async def _registry(self, request: web.Request) -> web.Response:
        return web.json_response(data.registry_json(self._registry_now, self._seen(request)))

    async def _view(self, request: web.Request) -> web.Response:
        reg = self._registry_now
        v = self._seen(request).require_view(reg, request.match_info["name"])
        out: dict[str, Any] = {"view": data.view_json(v)}
        if isinstance(self.facts, NodeFacts):
            facts = self.facts

            def read() -> dict[str, Any]:
                return data.freshness_json(v, facts.serving_stats(), facts.loader_stats())

            out["freshness"] = await asyncio.to_thread(read)
        else:
            out["freshness"] = None
        out["services"] = [
            s.name
            for s in reg.feature_services.values()
            if any(r.view == v.name for r in s.features)
            and self._seen(request).service(reg, s.name)
        ]
        return web.json_response(out)

    def _visible_views(self, request: web.Request) -> list[str]:
        seen = self._seen(request)
        return [v for v in self._registry_now.feature_views if seen.view(v)]

    async def _history(self, request: web.Request) -> web.Response:
        return web.json_response(self.history.to_json(self._visible_views(request)))

    async def _quality_chart(self, request: web.Request) -> web.Response:
        v = self._seen(request).require_view(self._registry_now, request.match_info["view"])
        series = self.history.quality_series(v.name)
        chart = svg.quality_chart(
            f"answer quality of {v.name}, share of values per status", QUALITY_STATUSES, series
        )
        return web.Response(text=chart, content_type=SVG)

    async def _requests_chart(self, _request: web.Request) -> web.Response:
        series = self.history.api_series()
        times = [s.at for s in self.history.samples]
        lines = [(api, [p.rate if p else None for _, p in pts]) for api, pts in series.items()]
        chart = svg.line_chart("requests per second, per API", "/s", times, lines)
        return web.Response(text=chart, content_type=SVG)

    async def _latency_chart(self, _request: web.Request) -> web.Response:
        series = self.history.api_series()
        times = [s.at for s in self.history.samples]
        lines: list[tuple[str, list[float | None]]] = []
        for api, pts in series.items():
            for q in ("p50", "p99"):
                ys = [
                    None if p is None or getattr(p, q) is None else getattr(p, q) * 1000
                    for _, p in pts
                ]
                lines.append((f"{api} {q}", ys))
        chart = svg.line_chart("latency per API (p50, p99)", "ms", times, lines)
        return web.Response(text=chart, content_type=SVG)

    async def _snippets(self, request: web.Request) -> web.Response:
        body = await self.frontend._json_body(request)
        features, service, entities = parse_try(body)
        seen, reg = self._seen(request), self._registry_now
        if service is not None and not seen.service(reg, service):
            raise PermissionDeniedError(f"this API key may not read feature service '{service}'")
        for ref in features or ():
            view = ref.partition(":")[0]
            if not seen.view(view):
                raise PermissionDeniedError(f"this API key may not read feature view '{view}'")
        host = request.host
        hostname = host.rpartition(":")[0] if host.count(":") == 1 else host
        base = f"{request.scheme}://{host}"
        grpc_target = f"{hostname or '127.0.0.1'}:{self.frontend.grpc_port}"
        return web.json_response(
            snippets(
                base,
                grpc_target,
                features,
                service,
                entities,
                auth=self.frontend.auth is not None,
            )
        )

    # -- cluster (router) ------------------------------------------------------------------

    def _router_facts(self) -> RouterFacts:
        if not isinstance(self.facts, RouterFacts):
            raise NotFoundError("a node has no cluster page; open the router's console")
        return self.facts

    async def _cluster(self, request: web.Request) -> web.Response:
        facts = self._router_facts()
        cluster, ready = facts.cluster(), facts.replica_ready()
        auth = request.headers.get("Authorization")
        endpoints = [(s, e) for s, es in sorted(cluster.shards.items()) for e in es]
        infos = await asyncio.gather(*(facts.node_info(e, auth) for _, e in endpoints))
        shards: dict[int, list[dict[str, Any]]] = {}
        for (shard, endpoint), info in zip(endpoints, infos, strict=True):
            entry: dict[str, Any] = {
                "endpoint": endpoint,
                "http": cluster.http.get(endpoint),
                "ready": bool(ready.get(endpoint, False)),
            }
            if isinstance(info, NodeInfo):
                entry["node"] = {
                    "version": info.version,
                    "ready": info.ready,
                    "shard_index": info.shard_index,
                    "loader_lag": info.loader_lag,
                }
            else:
                entry["node"] = None
                entry["unreachable"] = info
            shards.setdefault(shard, []).append(entry)
        return web.json_response(
            {
                "shard_count": cluster.shard_count,
                "topic_partitions": cluster.topic_partitions,
                "checked_at": time.time(),
                "shards": [{"shard": s, "replicas": r} for s, r in sorted(shards.items())],
            }
        )

    async def _owner(self, request: web.Request) -> web.Response:
        """Which shard owns an entity: ``?view=V&key=VALUE`` (a ``key`` per join key, in the
        view's join-key order)."""
        facts = self._router_facts()
        name = request.query.get("view")
        if not name:
            raise InvalidArgumentError("query parameter 'view' is required")
        v = self._seen(request).require_view(self._registry_now, name)
        values = request.query.getall("key", [])
        if len(values) != len(v.join_keys):
            raise InvalidArgumentError(
                f"view '{v.name}' has join keys {[k.name for k in v.join_keys]}: give one "
                "'key' parameter per join key"
            )
        typed: list[Any] = []
        for k, raw in zip(v.join_keys, values, strict=True):
            if k.dtype in ("int32", "int64"):
                try:
                    typed.append(int(raw))
                except ValueError:
                    raise InvalidArgumentError(
                        f"join key '{k.name}' is {k.dtype}, not {raw!r}"
                    ) from None
            elif k.dtype == "bytes":
                typed.append(raw.encode())
            else:
                typed.append(raw)
        cluster = facts.cluster()
        out: dict[str, Any] = {
            "view": v.name,
            "key": dict(zip([k.name for k in v.join_keys], values, strict=True)),
        }
        if v.stream_source is None:
            out.update(sharded=False, shard=None, partition=None, replicas=cluster.endpoints)
        else:
            from serving.sharding import partition_for_key

            (key,) = encode_entity_keys([k.dtype for k in v.join_keys], [[t] for t in typed])
            partition = partition_for_key(key, cluster.topic_partitions)
            shard = partition % cluster.shard_count
            out.update(
                sharded=True,
                partition=partition,
                shard=shard,
                replicas=cluster.shards.get(shard, []),
            )
        return web.json_response(out)

    # -- admin -----------------------------------------------------------------------------

    async def _keys(self, request: web.Request) -> web.Response:
        self.frontend._require_admin(request)
        auth = self.frontend.auth
        if auth is None:
            return web.json_response({"auth": False, "keys": []})
        keys = await asyncio.to_thread(auth.keys_file.load)
        return web.json_response(
            {
                "auth": True,
                "keys_file": str(auth.keys_file.path),
                "keys": [data.key_json(k, auth.last_used.get(k.key_id)) for k in keys],
                "last_use_resolution_seconds": self.history.interval,
            }
        )

    async def _reload_preview(self, request: web.Request) -> web.Response:
        self.frontend._require_admin(request)
        path = self.frontend.settings.config
        new = await asyncio.to_thread(Registry.from_yaml, path)
        return web.json_response(
            {
                "config": path,
                "changes": data.registry_diff(self._registry_now, new),
                "apply_path": self.facts.reload_path,
            }
        )


async def replica_node_info(
    channels: ClusterChannels, endpoint: str, authorization: str | None
) -> NodeInfo | str:
    """A replica's GetNodeInfo, asked with the console caller's own key (so the node checks
    it again), or why it did not answer."""
    metadata = (("authorization", authorization),) if authorization else None
    try:
        raw = await channels.call_replica(
            endpoint, NODE_INFO_METHOD, b"", metadata=metadata, timeout=1.0
        )
    except grpc.aio.AioRpcError as e:
        return f"{e.code().name}: {e.details() or 'no answer'}"
    return NodeInfo.from_proto(pb.GetNodeInfoResponse.FromString(raw))


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/" or request.path.startswith(CONSOLE_PATH):
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
