"""Feast's write requests checked whole before anything is written: a ``PushFeaturesRequest``
(``POST /push``) or ``WriteToFeatureStoreRequest`` (``POST /write-to-online-store``), either
as JSON or converted from Feast's gRPC messages (``feast_grpc_write``), becomes a
:class:`PushPlan`: the views written, each view's rows converted (``feast_columns``) and, for
offline halves, cast to each batch source's schema. Node and router both write plans
(``feast_write``, ``router_writes``); a bad body is a 4xx here, so nothing is written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from serving.errors import FeatureServingError, InvalidArgumentError, StorageError
from serving.frontend.feast_columns import view_table
from serving.registry import FeatureView, Registry

if TYPE_CHECKING:
    from serving.loaders.batch.append import PreparedAppend

#: checks the caller may write these views (raises 401/403); called before any column is read
Authorize = Callable[[tuple[FeatureView, ...]], None]

PUSH_MODES = ("online", "offline", "online_and_offline")


def field_of(body: dict[str, Any], name: str, kind: type, what: str, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None and default is None:
        raise InvalidArgumentError(f"missing field '{name}' ({what})")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgumentError(f"field '{name}' must be {what}, got {value!r:.60}")
    return value


def feast_flags(body: dict[str, Any]) -> None:
    """Feast's optional flags: accepted when they mean what we do anyway."""
    for name in ("allow_registry_cache", "transform_on_write"):
        if name in body and not isinstance(body[name], bool):
            raise InvalidArgumentError(f"field '{name}' must be true or false")


@dataclass
class PushPlan:
    """A checked write, nothing written yet: the rows of each view (the write path's schema)
    and, for ``offline`` halves, the rows as each batch source stores them."""

    source: str
    to: str
    tables: list[tuple[FeatureView, pa.Table]]
    #: the request's columns as they came (what a router forwards to nodes)
    df: dict[str, Any]
    prepared: list[PreparedAppend] = field(default_factory=list)

    @property
    def online(self) -> bool:
        return self.to != "offline"

    @property
    def rows(self) -> int:
        """Rows written, summed over the views (the audit log's entity count)."""
        return sum(t.num_rows for _, t in self.tables)


def push_plan(
    registry: Registry, body: dict[str, Any], authorize: Authorize, *, offline_here: bool = True
) -> PushPlan:
    """A ``PushFeaturesRequest`` checked whole: the views of its push source, every column of
    each converted, the offline rows cast to each batch source's schema (any error here is a
    4xx and nothing has been written). ``offline_here=False`` (a router, which may not see
    the sources): the offline half is left to a node, nothing read from the sources."""
    source = field_of(body, "push_source_name", str, "a push source name")
    df = field_of(body, "df", dict, "a JSON object of columns")
    to = field_of(body, "to", str, f"one of {', '.join(PUSH_MODES)}", "online")
    if to not in PUSH_MODES:
        raise InvalidArgumentError(f"field 'to' must be one of {', '.join(PUSH_MODES)}, got '{to}'")
    feast_flags(body)
    views = registry.push_views(source)
    authorize(views)
    tables = [(v, view_table(registry, v, df)) for v in views]
    prepared = []
    if to != "online" and offline_here:
        from serving.loaders.batch import append

        prepared = [append.prepare(v, t) for v, t in tables]
    return PushPlan(source, to, tables, df, prepared)


def write_plan(registry: Registry, body: dict[str, Any], authorize: Authorize) -> PushPlan:
    """A ``WriteToFeatureStoreRequest`` checked whole: an online push to the named view."""
    name = field_of(body, "feature_view_name", str, "a feature view name")
    df = field_of(body, "df", dict, "a JSON object of columns")
    feast_flags(body)
    view = registry.view(name)
    authorize((view,))
    return PushPlan("", "online", [(view, view_table(registry, view, df))], df)


def stored(view: str, stats: Any) -> dict[str, Any]:
    """The answer's entry of rows written into a store."""
    return {
        "feature_view": view,
        "rows": stats.rows,
        "written": stats.written,
        "skipped_older": stats.skipped_older,
    }


def part_way(plan: PushPlan, done: list[str], e: BaseException) -> FeatureServingError:
    """A failure after some of a write was done: the same error class, saying what was
    written where before it failed."""
    cls = type(e) if isinstance(e, FeatureServingError) else StorageError
    reason = e.message if isinstance(e, FeatureServingError) else str(e)
    what = f"push '{plan.source}' (to={plan.to})" if plan.source else "write-to-online-store"
    return cls(f"{what} failed part way: already written: {'; '.join(done)}; then failed: {reason}")
