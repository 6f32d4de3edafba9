"""Writes through ``feature-serving route``: ``POST /push``, ``/write-to-online-store``,
``/v1/push`` and Feast's gRPC ``Push`` / ``WriteToOnlineStore`` (docs/scale-out.md, "Writes
through the router").

The router checks a write whole first (the caller's write scope, every column; a bad write is
a 4xx and nothing is sent anywhere), then writes where the rows are read from:

- a view with a stream source (sharded: each key is served by the shard owning its partition)
  is **published once to its topic** (``feast_publish``, the producer code of
  ``materialize --via-kafka``); every replica of the owning shard applies it through its
  loader, and no node is asked to store a key it does not own;
- a view without one is not sharded: every node holds every key and the router reads it from
  any shard, so a write goes to **every replica** listed in the cluster map (over HTTP, with
  the caller's own ``Authorization``). Splitting it by owner would leave reads of the other
  shards without the rows;
- the offline half of a push (``to: offline`` / ``online_and_offline``) is sent to one node,
  which appends to the batch source as a node does; the router never reads the sources.

All or nothing is what the checks before the first write give; a failure after it (a broker
or a replica down) answers the error of the failing part, saying what was written where
(which replicas, which topic) and what failed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from serving.cluster.map import ClusterMap
from serving.errors import (
    FeatureServingError,
    InvalidArgumentError,
    ShardUnavailableError,
    error_class,
)
from serving.frontend.feast_columns import v1_rows_table
from serving.frontend.feast_plan import PushPlan, part_way
from serving.frontend.feast_routes import FeastWriteRoutes, json_object
from serving.frontend.tls import node_ssl_context
from serving.registry import EVENT_TIMESTAMP, FeatureView


class RouterWrites(FeastWriteRoutes):
    """The write routes of :class:`~serving.frontend.router.FeatureRouter`."""

    cluster: ClusterMap
    _session: ClientSession | None = None

    def _router_write_routes(self, app: web.Application) -> None:
        self._feast_online_write_routes(app)
        app.router.add_post("/v1/push", self._v1_push)

    def _plan_options(self) -> dict[str, Any]:
        return {"offline_here": False}

    async def _close_router_writes(self) -> None:
        self._close_writes()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- where rows go ---------------------------------------------------------------------

    def _replica_urls(self, what: str) -> list[tuple[int, str, str]]:
        """(shard, gRPC endpoint, base URL) of every replica; 400 before anything is written
        when the map lacks an HTTP address (writes go to the nodes' HTTP write endpoints)."""
        scheme = "https" if self.settings.node_tls_ca else "http"
        out: list[tuple[int, str, str]] = []
        missing: list[str] = []
        for shard, endpoints in sorted(self.cluster.shards.items()):
            for ep in endpoints:
                address = self.cluster.http.get(ep)
                if address is None:
                    missing.append(ep)
                else:
                    out.append((shard, ep, f"{scheme}://{address}"))
        if missing:
            raise InvalidArgumentError(
                f"{what} goes to every replica's HTTP write endpoint, and the cluster map gives "
                f"no HTTP address for {', '.join(missing)} (write {{grpc: 'host:port', http: "
                "'host:port'}} entries); nothing was written"
            )
        return out

    def _client(self) -> ClientSession:
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=30))
        return self._session

    async def _post(
        self, shard: int, endpoint: str, url: str, body: dict[str, Any], authorization: str | None
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        name = f"shard {shard} replica {endpoint}"
        try:
            async with self._client().post(
                url, data=json.dumps(body).encode(), headers=headers,
                ssl=node_ssl_context(self.settings) or False,
            ) as r:  # fmt: skip
                raw = await r.read()
                status = r.status
        except (ClientError, OSError, TimeoutError) as e:
            raise ShardUnavailableError(f"{name} is unavailable: {e or type(e).__name__}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if status == 200 and isinstance(answer, dict):
            return answer
        err = answer.get("error", {}) if isinstance(answer, dict) else {}
        code = err.get("code") if isinstance(err, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        cls = error_class(code=code, http_status=status)
        if cls is FeatureServingError:
            cls = ShardUnavailableError
        raise cls(f"{name} answered {status}: {message or raw[:200].decode(errors='replace')}")

    async def _every_replica(
        self, path: str, body: dict[str, Any], authorization: str | None, what: str
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """``body`` to ``path`` of every replica at once; every answer, or the error of a
        failed replica saying which replicas did write."""
        replicas = self._replica_urls(what)
        results = await asyncio.gather(
            *(self._post(s, ep, url + path, body, authorization) for s, ep, url in replicas),
            return_exceptions=True,
        )
        ok = [(s, ep, r) for (s, ep, _), r in zip(replicas, results, strict=True)
              if isinstance(r, dict)]  # fmt: skip
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return ok
        first = failed[0]
        cls = type(first) if isinstance(first, FeatureServingError) else ShardUnavailableError
        reason = first.message if isinstance(first, FeatureServingError) else str(first)
        written = ", ".join(f"shard {s} replica {ep}" for s, ep, _ in ok) or "no replica"
        raise cls(
            f"{what}: written by {written}; failed on {len(failed)} of {len(replicas)} "
            f"replicas: {reason}"
        )

    # -- Feast's writes --------------------------------------------------------------------

    async def run_plan(self, plan: PushPlan, authorization: str | None) -> list[dict[str, Any]]:
        """Offline half on one node first (as a node orders it), then each view's online
        rows: stream-backed views published to the topic, the others to every replica."""
        done: list[str] = []
        out: list[dict[str, Any]] = []
        broadcast = [v for v, _ in plan.tables if v.stream_source is None]
        if plan.online and broadcast:  # refuse a map without HTTP addresses before writing
            self._replica_urls(f"an online write of feature view '{broadcast[0].name}'")
        try:
            if plan.to != "online" and any(t.num_rows for _, t in plan.tables):
                out += await self._offline_half(plan, authorization, done)
            if plan.online:
                for v, t in plan.tables:
                    if v.stream_source is not None:
                        pub = await self.publisher.publish(v, t)
                        done.append(f"online: {pub.describe()}")
                        out.append(pub.to_json())
                        continue
                    out.append(await self._online_everywhere(v, t.num_rows, plan, authorization))
                    done.append(
                        f"online: {t.num_rows} rows of feature view '{v.name}' to every replica"
                    )
        except Exception as e:
            if not done:
                raise
            raise part_way(plan, done, e) from e
        return out

    async def _offline_half(
        self, plan: PushPlan, authorization: str | None, done: list[str]
    ) -> list[dict[str, Any]]:
        """The push with ``to: offline`` to one node (the first replica of the map that answers
        ``/push``), which appends to each view's batch source."""
        what = f"the offline half of push '{plan.source}'"
        body = {"push_source_name": plan.source, "df": plan.df, "to": "offline"}
        last: FeatureServingError | None = None
        for shard, ep, url in self._replica_urls(what):
            try:
                answer = await self._post(shard, ep, url + "/push", body, authorization)
            except ShardUnavailableError as e:
                last = e  # another node can append it as well
                continue
            views: list[dict[str, Any]] = answer.get("views", [])
            for entry in views:
                done.append(f"offline: {entry.get('feature_view')} to {entry.get('offline')}")
            return views
        assert last is not None
        raise last

    async def _online_everywhere(
        self, v: FeatureView, rows: int, plan: PushPlan, authorization: str | None
    ) -> dict[str, Any]:
        body = {"feature_view_name": v.name, "df": plan.df}
        answers = await self._every_replica(
            "/write-to-online-store", body, authorization,
            f"online write of {rows} rows of feature view '{v.name}'",
        )  # fmt: skip
        return {
            "feature_view": v.name,
            "rows": rows,
            "replicas": [
                {"shard": s, "replica": ep, "written": a.get("written"),
                 "skipped_older": a.get("skipped_older")}
                for s, ep, a in answers
            ],
        }  # fmt: skip

    # -- v1 push ---------------------------------------------------------------------------

    async def _v1_push(self, request: web.Request) -> web.Response:
        """``POST /v1/push`` through the router: a stream-backed view's rows published to its
        topic, another view's sent to every replica's ``/v1/push``."""
        from serving.frontend.base import read_body

        body = json_object(await read_body(request))
        name, rows = body.get("feature_view"), body.get("rows")
        if not isinstance(name, str) or not isinstance(rows, dict) or not rows:
            raise InvalidArgumentError(
                'expected {"feature_view": name, "rows": {column: [values, ...]}}'
            )
        self._authorizer(self._principal(request))((self.registry.view(name),))
        fv = self.registry.view(name)
        table = await self._in_worker(lambda: v1_rows_table(self.registry, fv, rows))
        if fv.stream_source is None:
            answers = await self._every_replica(
                "/v1/push", body, request.headers.get("Authorization"),
                f"/v1/push of {table.num_rows} rows of feature view '{fv.name}'",
            )  # fmt: skip
            return web.json_response(
                {"rows": table.num_rows, "replicas": [
                    {"shard": s, "replica": ep, "written": a.get("written"),
                     "skipped_older": a.get("skipped_older")} for s, ep, a in answers
                ]}
            )  # fmt: skip
        needed = [k.name for k in fv.join_keys] + [EVENT_TIMESTAMP]
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise InvalidArgumentError(
                f"rows: missing column {', '.join(repr(c) for c in missing)} of feature view "
                f"'{fv.name}'"
            )
        pub = await self.publisher.publish(fv, table)
        return web.json_response({"rows": pub.rows, "published": pub.rows, "topic": pub.topic})
