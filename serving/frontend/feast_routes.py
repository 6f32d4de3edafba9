"""Feast's online write endpoints as every frontend answers them, node and router alike:
``POST /push`` and ``POST /write-to-online-store`` over HTTP, ``GrpcFeatureServer/Push`` and
``/WriteToOnlineStore`` over gRPC. Each request becomes a checked :class:`PushPlan`
(``feast_plan``; the write scope is checked on the views before any column is read), which the
frontend's :meth:`FeastWriteRoutes.run_plan` writes: a node into its store or its views'
topics (``feast_write``), a router to its shards or the topics (``router_writes``). The
answers, the error bodies and the request metrics (``feast-http`` / ``feast-grpc``, method
``push`` ...) are the same on both."""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web

from serving.errors import InvalidArgumentError, UnauthenticatedError
from serving.frontend.auth import Principal
from serving.frontend.base import Frontend, read_body
from serving.frontend.endpoints import FEAST_GRPC_SERVER
from serving.frontend.feast_grpc_write import push_answer, push_body, write_answer, write_body
from serving.frontend.feast_plan import Authorize, PushPlan, push_plan, write_plan
from serving.frontend.feast_publish import TopicPublisher
from serving.frontend.grpc_auth import principal
from serving.registry import FeatureView
from serving.security import audit


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (400 naming the problem otherwise)."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError as e:
        raise InvalidArgumentError(f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("the body must be a JSON object")
    return body


def _as_grpc_field(e: InvalidArgumentError, field: str) -> InvalidArgumentError:
    """A df error of a converted gRPC row, named by the request's field ('features' ...)."""
    msg = e.message
    if msg.startswith("df"):
        msg = field + msg[2:]
    return InvalidArgumentError(msg.replace(" row 0:", ":"))


class FeastWriteRoutes(Frontend, ABC):
    """The handlers of this module; subclasses write the plans (:meth:`run_plan`)."""

    _publisher: TopicPublisher | None = None

    @abstractmethod
    async def run_plan(self, plan: PushPlan, authorization: str | None) -> list[dict[str, Any]]:
        """Writes a checked plan; returns the answer's entry per view written.
        ``authorization``: the caller's own header, for a router to pass on."""

    @property
    def publisher(self) -> TopicPublisher:
        """Producers of online pushes to stream-backed views (opened on the first one)."""
        if self._publisher is None:
            self._publisher = TopicPublisher(self.settings.bootstrap_servers)
        return self._publisher

    def _close_writes(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    def _feast_online_write_routes(self, app: web.Application) -> None:
        app.router.add_post("/push", self._feast_push)
        app.router.add_post("/write-to-online-store", self._feast_write_to_online_store)

    def _feast_write_grpc_methods(self) -> dict[tuple[str, str], grpc.RpcMethodHandler[Any, Any]]:
        return {
            (FEAST_GRPC_SERVER, "Push"): self._grpc_unary(
                self._grpc_push, "feast-grpc", "GrpcFeatureServer.Push"
            ),
            (FEAST_GRPC_SERVER, "WriteToOnlineStore"): self._grpc_unary(
                self._grpc_write, "feast-grpc", "GrpcFeatureServer.WriteToOnlineStore"
            ),
        }

    @staticmethod
    async def _in_worker(job: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, job)

    def _authorizer(self, p: Principal | None) -> Authorize:
        # taken here, on the loop: authorize runs in a worker thread, outside the context
        noted = audit.current.get()

        def authorize(views: tuple[FeatureView, ...]) -> None:
            if noted is not None:
                noted.views.extend(v.name for v in views if v.name not in noted.views)
            if self.auth is None:
                return
            if p is None:
                raise UnauthenticatedError("missing API key")
            for v in views:
                p.require_write(v.name)

        return authorize

    # -- HTTP ------------------------------------------------------------------------------

    async def _feast_push(self, request: web.Request) -> web.Response:
        # A push body may be up to --max-message-bytes of JSON: parsing and decoding run in a
        # worker thread, so the loop goes on serving reads meanwhile.
        raw = await read_body(request)
        authorize = self._authorizer(self._principal(request))
        plan = await self._in_worker(
            lambda: push_plan(self.registry, json_object(raw), authorize, **self._plan_options())
        )
        audit.note(entities=plan.rows)
        views = await self.run_plan(plan, request.headers.get("Authorization"))
        return web.json_response({"push_source_name": plan.source, "to": plan.to, "views": views})

    async def _feast_write_to_online_store(self, request: web.Request) -> web.Response:
        raw = await read_body(request)
        authorize = self._authorizer(self._principal(request))
        plan = await self._in_worker(lambda: write_plan(self.registry, json_object(raw), authorize))
        audit.note(entities=plan.rows)
        (answer,) = await self.run_plan(plan, request.headers.get("Authorization"))
        return web.json_response(answer)

    def _plan_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`push_plan` for this frontend."""
        return {}

    # -- gRPC ------------------------------------------------------------------------------

    @staticmethod
    def _grpc_authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        for k, v in context.invocation_metadata() or ():
            if k == "authorization":
                return v if isinstance(v, str) else v.decode()
        return None

    async def _grpc_push(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        authorize = self._authorizer(principal.get())

        def plan() -> PushPlan:
            body, field = push_body(self.registry, request)
            try:
                return push_plan(self.registry, body, authorize, **self._plan_options())
            except InvalidArgumentError as e:
                raise _as_grpc_field(e, field) from None

        checked = await self._in_worker(plan)
        audit.note(entities=checked.rows)
        await self.run_plan(checked, self._grpc_authorization(context))
        return push_answer()

    async def _grpc_write(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        authorize = self._authorizer(principal.get())

        def plan() -> PushPlan:
            body, field = write_body(self.registry, request)
            try:
                return write_plan(self.registry, body, authorize)
            except InvalidArgumentError as e:
                raise _as_grpc_field(e, field) from None

        checked = await self._in_worker(plan)
        audit.note(entities=checked.rows)
        await self.run_plan(checked, self._grpc_authorization(context))
        return write_answer()
