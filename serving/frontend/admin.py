"""A node's admin and write endpoints: ``POST /v1/push`` (rows), ``/admin/materialize`` (a
batch-loader job in the server, which owns the store), ``/admin/snapshot`` (a RocksDB
checkpoint), ``/admin/registry/reload`` and ``GET /admin/stats``. Every one but push needs an
admin key; all of them run their work in a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from aiohttp import web

from serving.errors import InvalidArgumentError
from serving.frontend.base import Frontend
from serving.registry import Registry
from serving.security import audit
from serving.store import Store

log = logging.getLogger("serving.server")


class NodeAdmin(Frontend, ABC):
    """The admin routes of :class:`~serving.frontend.node.FeatureServer`."""

    store: Store
    #: per view: time of the last batch job this server ran, and the rows those jobs applied
    batch_runs: dict[str, float]
    batch_totals: dict[str, dict[str, int]]

    @abstractmethod
    def _configure_sharding(self) -> None:
        """Applies the shard's ownership check to the store's current registry."""

    @abstractmethod
    def _configure_logging(self) -> None:
        """Applies the store's current registry's served-feature logging."""

    def _admin_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/push", self._http_push)
        app.router.add_post("/admin/materialize", self._admin_materialize)
        app.router.add_post("/admin/registry/reload", self._admin_reload_registry)
        app.router.add_post("/admin/snapshot", self._admin_snapshot)
        app.router.add_get("/admin/stats", self._admin_stats)

    async def _admin_stats(self, request: web.Request) -> web.Response:
        """The store's hot-tier and RocksDB figures (`feature-serving stats --server`)."""
        self._require_admin(request)
        return web.json_response(await asyncio.to_thread(self.store.stats))

    async def _http_push(self, request: web.Request) -> web.Response:
        """Writes rows to a view: ``{"feature_view": "v", "rows": {"col": [...], ...}}``
        (columns: join keys, ``event_timestamp`` as RFC 3339 or epoch micros, features)."""
        from serving.frontend.feast_columns import v1_rows_table

        body = await self._json_body(request)
        view = body.get("feature_view")
        rows = body.get("rows")
        if not isinstance(view, str) or not isinstance(rows, dict) or not rows:
            raise InvalidArgumentError(
                'expected {"feature_view": name, "rows": {column: [values, ...]}}'
            )
        audit.note([view])
        p = self._principal(request)
        if self.auth is not None and p is not None:
            p.require_write(view)
        fv = self.store.registry.view(view)
        table = v1_rows_table(self.store.registry, fv, rows)
        audit.note([view], table.num_rows)
        shard = self.settings.shard()
        if shard is not None and fv.stream_source is not None:
            from serving.frontend.write_shards import check_owned

            check_owned(fv, table, shard, self.settings.topic_partitions)
        stats = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.store.write(view, table)
        )
        return web.json_response(
            {"rows": stats.rows, "written": stats.written, "skipped_older": stats.skipped_older}
        )

    async def _admin_materialize(self, request: web.Request) -> web.Response:
        """Runs a batch-loader job in the server, which owns the store:
        ``{"views": [...], "start": T, "end": T, "incremental": bool, "on_error": "fail",
        "via_kafka": bool}`` (``via_kafka``: publish to the views' stream-source topics; the
        store is written only when this node consumes them)."""
        from serving.loaders import batch as batch_loader

        self._require_admin(request)
        body = await self._json_body(request)
        views = body.get("views") or None
        start = batch_loader.parse_time(body["start"]) if body.get("start") else None
        end = batch_loader.parse_time(body["end"]) if body.get("end") else None
        on_error = body.get("on_error", "fail")
        if on_error not in ("fail", "skip"):
            raise InvalidArgumentError("on_error must be 'fail' or 'skip'")
        if body.get("via_kafka") and body.get("incremental"):
            raise InvalidArgumentError(
                "via_kafka incremental runs are not offered through the admin API: run "
                "`feature-serving materialize-incremental --via-kafka` (it needs only the "
                "registry)"
            )

        def job() -> Any:
            if body.get("incremental"):
                return batch_loader.materialize_incremental(
                    self.store, views, end=end, on_error=on_error, progress=False,
                    dry_run=bool(body.get("dry_run")),
                )  # fmt: skip
            return batch_loader.materialize(
                self.store, views, start, end, on_error=on_error, progress=False,
                dry_run=bool(body.get("dry_run")),
                as_of_version=body.get("as_of_version"),
                via_kafka=bool(body.get("via_kafka")),
            )  # fmt: skip

        summary = await asyncio.get_running_loop().run_in_executor(None, job)
        self._note_batch_run(summary)
        return web.json_response({"summary": str(summary)})

    def _note_batch_run(self, summary: Any) -> dict[str, Any]:
        """Records a finished batch job for the loader metrics; returns its JSON account."""
        now = time.time()
        for vs in summary.views:
            self.batch_runs[vs.view] = now
            totals = self.batch_totals.setdefault(
                vs.view, {"applied": 0, "skipped_older": 0, "errors": 0}
            )
            totals["applied"] += vs.written
            totals["skipped_older"] += vs.skipped_older
            totals["errors"] += vs.errors
        views = [
            {"feature_view": vs.view, "rows_read": vs.rows_read, "written": vs.written,
             "skipped_older": vs.skipped_older, "errors": vs.errors}
            for vs in summary.views
        ]  # fmt: skip
        return {"summary": str(summary), "views": views}

    async def _admin_snapshot(self, request: web.Request) -> web.Response:
        """Writes a snapshot (RocksDB checkpoint, with the loader offsets) of the live store:
        ``{"path": "/abs/dir"}``, a new directory on the server's file system. It runs in a
        worker thread: reads go on; writes (loader, push, batch jobs) wait for it."""
        from serving import snapshot

        self._require_admin(request)
        body = await self._json_body(request)
        path = body.get("path")
        if not isinstance(path, str) or not path or not os.path.isabs(path):
            raise InvalidArgumentError(
                'expected {"path": "/absolute/dir"} (a new directory on the server\'s machine)'
            )
        dest = Path(path)

        def job() -> tuple[int, int]:
            self.store.checkpoint(dest)
            if self.auth is not None:
                snapshot.add_keys(dest, self.auth.keys_file.path)
            return snapshot.size(dest)

        files, size = await asyncio.get_running_loop().run_in_executor(None, job)
        log.info("snapshot written to %s (%d files, %d bytes)", dest, files, size)
        return web.json_response({"snapshot": str(dest), "files": files, "bytes": size})

    async def _admin_reload_registry(self, request: web.Request) -> web.Response:
        """Re-reads the registry file and applies it to the live store (``{"force": bool,
        "reload_transforms": bool}``: the second imports the on-demand views' modules again;
        without it a changed module is not picked up, so that a reload for a new feature view
        does not swap transform code under a running service)."""
        self._require_admin(request)
        body = await self._json_body(request)
        registry = Registry.from_yaml(
            self.settings.config, reload_transforms=bool(body.get("reload_transforms"))
        )
        changes = self.store.apply_registry(registry, force=bool(body.get("force")))
        self._configure_sharding()
        await asyncio.to_thread(self._configure_logging)
        if self.auth is not None:
            self.auth.set_project(registry.project)
        return web.json_response({"changes": changes})
