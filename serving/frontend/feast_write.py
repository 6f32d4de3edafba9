"""Feast's write endpoints on a node, with Feast's request bodies (docs/feast-compatibility.md,
"Writes"):

- ``POST /push`` (``PushFeaturesRequest``): rows to every view whose ``push_source`` is the
  named source, ``to`` = ``online`` (the store, under the merge rule), ``offline`` (appended to
  the view's batch source) or ``online_and_offline``;
- ``POST /write-to-online-store`` (``WriteToFeatureStoreRequest``, what Feast's ``remote``
  online store sends for ``write_to_online_store``, ``push`` and ``materialize``): an online
  push to the named view;
- ``POST /materialize``, ``POST /materialize-incremental`` (``MaterializeRequest``,
  ``MaterializeIncrementalRequest``): a batch-loader run in the server; admin keys only.

Writes need an API key that may write every view written (``--write``), offline pushes too.
A batch is decoded and checked whole before anything is written (``feast_plan``), so bad
input writes nothing. The push handlers (HTTP and gRPC) are shared with the router
(``feast_routes``); this module says how a node writes a plan and runs materializations.
An online write of a view with a stream source is published to its topic rather than
written here (``feast_publish``), so that every replica and shard gets it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from aiohttp import web

from serving.errors import InvalidArgumentError
from serving.frontend.admin import NodeAdmin
from serving.frontend.feast_plan import PushPlan, field_of, part_way, stored
from serving.frontend.feast_routes import FeastWriteRoutes

log = logging.getLogger("serving.server")


class FeastWrites(NodeAdmin, FeastWriteRoutes):
    """The routes of this module, on :class:`~serving.frontend.node.FeatureServer`."""

    def _feast_write_routes(self, app: web.Application) -> None:
        self._feast_online_write_routes(app)
        app.router.add_post("/materialize", self._feast_materialize)
        app.router.add_post("/materialize-incremental", self._feast_materialize_incremental)

    def _remove_stale_push_temps(self) -> None:
        """Crash leftovers of offline pushes (hidden temporary files; readers skip them)."""
        from serving.loaders.batch.append import remove_stale_temps

        for v in self.store.registry.feature_views.values():
            try:
                removed = remove_stale_temps(v)
            except OSError as e:
                log.warning("feature view '%s': cannot clean its batch source: %s", v.name, e)
                continue
            for path in removed:
                log.warning("removed %s, left by an offline push that did not finish", path)

    async def run_plan(self, plan: PushPlan, authorization: str | None) -> list[dict[str, Any]]:
        """Writes a checked plan: offline halves first, then the online rows, into this store,
        or, for a view with a stream source, published to its topic (``feast_publish``), from
        which every replica and shard applies them (this node too, through its loader)."""
        from serving.loaders.batch.append import append

        done: list[str] = []
        out: list[dict[str, Any]] = []
        try:
            # Offline first: rows that reached the source but not the store are loaded
            # by the next materialize run; the other order would leave the online store
            # holding rows that training data never sees.
            for p in (p for p in plan.prepared if p.table.num_rows):  # no empty files
                a = await self._in_worker(functools.partial(append, p))
                done.append(f"offline: {a.describe()}")
                entry: dict[str, Any] = {"feature_view": a.view, "offline": a.path}
                if a.delta_version is not None:
                    entry["delta_version"] = a.delta_version
                out.append(entry)
            if plan.online:
                for v, t in plan.tables:
                    if v.stream_source is not None:
                        pub = await self.publisher.publish(v, t)
                        done.append(f"online: {pub.describe()}")
                        out.append(pub.to_json())
                        continue
                    stats = await self._in_worker(functools.partial(self.store.write, v.name, t))
                    done.append(f"online: {stats.written} rows to feature view '{v.name}'")
                    out.append(stored(v.name, stats))
        except Exception as e:
            if not done:
                raise
            raise part_way(plan, done, e) from e
        return out

    async def _materialize_body(self, request: web.Request) -> tuple[dict[str, Any], Any]:
        self._require_admin(request)
        if request.query.get("async", "false").lower() not in ("false", "0"):
            raise InvalidArgumentError(
                "query parameter 'async': asynchronous runs are not offered; the call answers "
                "when the run is done"
            )
        body = await self._json_body(request)
        if body.get("version") is not None:
            raise InvalidArgumentError("field 'version': feature view versions are not supported")
        views = body.get("feature_views")
        if views is not None and (
            not isinstance(views, list) or not all(isinstance(v, str) for v in views)
        ):
            raise InvalidArgumentError("field 'feature_views' must be a list of view names")
        for v in views or ():
            self.store.registry.view(v)  # 404 naming it before the run starts
        return body, views or None

    @staticmethod
    def _time(body: dict[str, Any], name: str) -> Any:
        from serving.loaders import batch as batch_loader

        value = field_of(body, name, str, "an ISO 8601 time")
        try:
            return batch_loader.parse_time(value)
        except (ValueError, InvalidArgumentError) as e:
            raise InvalidArgumentError(f"field '{name}': {e}") from None

    async def _feast_materialize(self, request: web.Request) -> web.Response:
        from serving.loaders import batch as batch_loader

        body, views = await self._materialize_body(request)
        disable = body.get("disable_event_timestamp", False)
        if not isinstance(disable, bool):
            raise InvalidArgumentError("field 'disable_event_timestamp' must be true or false")
        # Feast's disable_event_timestamp loads every row whatever its time: an unbounded run
        start = None if disable else self._time(body, "start_ts")
        end = None if disable else self._time(body, "end_ts")
        summary = await self._in_worker(
            lambda: batch_loader.materialize(self.store, views, start, end, progress=False)
        )
        return web.json_response(self._note_batch_run(summary))

    async def _feast_materialize_incremental(self, request: web.Request) -> web.Response:
        from serving.loaders import batch as batch_loader

        body, views = await self._materialize_body(request)
        end = self._time(body, "end_ts")
        summary = await self._in_worker(
            lambda: batch_loader.materialize_incremental(self.store, views, end=end, progress=False)
        )
        return web.json_response(self._note_batch_run(summary))
