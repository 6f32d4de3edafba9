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
A batch is decoded and checked whole before anything is written (``feast_columns``), so bad
input writes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from serving.errors import (
    FeatureServingError,
    InvalidArgumentError,
    StorageError,
    WrongShardError,
)
from serving.frontend.admin import NodeAdmin
from serving.frontend.base import read_body
from serving.frontend.feast_columns import view_table
from serving.registry import FeatureView
from serving.sharding import sharded_views

PUSH_MODES = ("online", "offline", "online_and_offline")


def _field(body: dict[str, Any], name: str, kind: type, what: str, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None and default is None:
        raise InvalidArgumentError(f"missing field '{name}' ({what})")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgumentError(f"field '{name}' must be {what}, got {value!r:.60}")
    return value


def _flags(body: dict[str, Any]) -> None:
    """Feast's optional flags: accepted when they mean what we do anyway."""
    for name in ("allow_registry_cache", "transform_on_write"):
        if name in body and not isinstance(body[name], bool):
            raise InvalidArgumentError(f"field '{name}' must be true or false")


class FeastWrites(NodeAdmin):
    """The routes of this module, on :class:`~serving.frontend.node.FeatureServer`."""

    def _feast_write_routes(self, app: web.Application) -> None:
        app.router.add_post("/push", self._feast_push)
        app.router.add_post("/write-to-online-store", self._feast_write_to_online_store)
        app.router.add_post("/materialize", self._feast_materialize)
        app.router.add_post("/materialize-incremental", self._feast_materialize_incremental)

    def _require_write(self, request: web.Request, views: tuple[FeatureView, ...]) -> None:
        p = self._principal(request)
        if self.auth is not None and p is not None:
            for v in views:
                p.require_write(v.name)

    def _refuse_sharded(self, views: tuple[FeatureView, ...]) -> None:
        """A shard writes only the keys it owns, and an online push would put any key in its
        store: a sharded view's rows go through its topic instead, which every shard reads."""
        if self.settings.shard() is None:
            return
        sharded = sharded_views(self.store.registry, self.settings.topic_partitions)
        for v in views:
            if v.name in sharded and v.stream_source is not None:
                raise WrongShardError(
                    f"feature view '{v.name}' is sharded over the partitions of topic "
                    f"'{v.stream_source.topic}': a shard does not take online pushes of it "
                    "(pushes are not published to the topic yet); produce the rows to the topic "
                    "or run `feature-serving materialize --via-kafka`"
                )

    async def _in_worker(self, job: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, job)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:
            raise InvalidArgumentError(f"malformed JSON: {e}") from None
        if not isinstance(body, dict):
            raise InvalidArgumentError("the body must be a JSON object")
        return body

    async def _feast_push(self, request: web.Request) -> web.Response:
        # A push body may be up to --max-message-bytes of JSON: parsing, decoding and writing
        # run in a worker thread, so the loop goes on serving reads meanwhile.
        raw = await read_body(request)
        return web.json_response(await self._in_worker(lambda: self._push(raw, request)))

    def _push(self, raw: bytes, request: web.Request) -> dict[str, Any]:
        body = self._parse(raw)
        source = _field(body, "push_source_name", str, "a push source name")
        df = _field(body, "df", dict, "a JSON object of columns")
        to = _field(body, "to", str, f"one of {', '.join(PUSH_MODES)}", "online")
        if to not in PUSH_MODES:
            raise InvalidArgumentError(
                f"field 'to' must be one of {', '.join(PUSH_MODES)}, got '{to}'"
            )
        _flags(body)
        registry = self.store.registry
        views = registry.push_views(source)
        self._require_write(request, views)
        online, offline = to != "offline", to != "online"
        if online:
            self._refuse_sharded(views)

        from serving.loaders.batch import append

        tables = [(v, view_table(registry, v, df)) for v in views]
        prepared = [append.prepare(v, t) for v, t in tables] if offline else []
        done: list[str] = []
        out: list[dict[str, Any]] = []
        try:
            # Offline first: rows that reached the source but not the store are loaded
            # by the next materialize run; the other order would leave the online store
            # holding rows that training data never sees.
            for p in (p for p in prepared if p.table.num_rows):  # no empty files
                a = append.append(p)
                done.append(f"offline: {a.describe()}")
                entry: dict[str, Any] = {"feature_view": a.view, "offline": a.path}
                if a.delta_version is not None:
                    entry["delta_version"] = a.delta_version
                out.append(entry)
            if online:
                for v, t in tables:
                    stats = self.store.write(v.name, t)
                    done.append(f"online: {stats.written} rows to feature view '{v.name}'")
                    out.append(
                        {
                            "feature_view": v.name,
                            "rows": stats.rows,
                            "written": stats.written,
                            "skipped_older": stats.skipped_older,
                        }
                    )
        except Exception as e:
            if not done:
                raise
            cls = type(e) if isinstance(e, FeatureServingError) else StorageError
            reason = e.message if isinstance(e, FeatureServingError) else str(e)
            raise cls(
                f"push '{source}' (to={to}) failed part way: already written: "
                f"{'; '.join(done)}; then failed: {reason}"
            ) from e
        return {"push_source_name": source, "to": to, "views": out}

    async def _feast_write_to_online_store(self, request: web.Request) -> web.Response:
        raw = await read_body(request)
        return web.json_response(await self._in_worker(lambda: self._write(raw, request)))

    def _write(self, raw: bytes, request: web.Request) -> dict[str, Any]:
        body = self._parse(raw)
        name = _field(body, "feature_view_name", str, "a feature view name")
        df = _field(body, "df", dict, "a JSON object of columns")
        _flags(body)
        registry = self.store.registry
        view = registry.view(name)
        self._require_write(request, (view,))
        self._refuse_sharded((view,))
        stats = self.store.write(view.name, view_table(registry, view, df))
        return {
            "feature_view": view.name,
            "rows": stats.rows,
            "written": stats.written,
            "skipped_older": stats.skipped_older,
        }

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

        value = _field(body, name, str, "an ISO 8601 time")
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
