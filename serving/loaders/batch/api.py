"""The batch loader's API: :func:`materialize` and :func:`materialize_incremental`."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from serving.errors import InvalidArgumentError
from serving.loaders.batch.formats import TABLE_FORMATS
from serving.loaders.batch.meta import (
    BATCH_ROWS,
    OnError,
    _get_table_version,
    _get_watermark,
    _iso,
    delta_version_key,
    parse_time,
    table_version_key,
    watermark_key,
)
from serving.loaders.batch.plan import Plan, _plan_parquet, _source_path
from serving.loaders.batch.publish import (
    KAFKA_TIMEOUT_S,
    KafkaTarget,
    _note_published,
    _publish,
    _published_state,
    _published_version,
    _state_of,
)
from serving.loaders.batch.read import _load, _note_skipped_files, _validate
from serving.loaders.batch.summary import LoadSummary, ViewSummary
from serving.loaders.publish_state import STATE_TOPIC, PublishState
from serving.registry import FeatureView, Registry
from serving.store import Store


def _kafka_target(selected: list[FeatureView], kafka: KafkaTarget, *, dry_run: bool) -> KafkaTarget:
    """Checks that every view can be published: it has a stream source, and (unless
    ``dry_run``) its topic exists on brokers that answer within the deadline."""
    if not kafka.timeout > 0:
        raise InvalidArgumentError(f"kafka_timeout must be positive, got {kafka.timeout}")
    missing = [fv.name for fv in selected if fv.stream_source is None]
    if missing:
        raise InvalidArgumentError(
            f"--via-kafka publishes to each view's stream_source topic, and feature "
            f"view(s) {', '.join(repr(m) for m in missing)} have none"
        )
    if not dry_run:
        for fv in selected:
            kafka.check(fv)
    return kafka


def _select_views(store: Store | Registry, views: Sequence[str] | str | None) -> list[FeatureView]:
    registry = store if isinstance(store, Registry) else store.registry
    if isinstance(views, str):
        views = [views]
    if views:
        out = []
        for name in views:
            fv = registry.view(name)
            if fv.batch_source is None:
                raise InvalidArgumentError(f"feature view '{name}' has no batch_source")
            out.append(fv)
        return out
    return [
        fv for fv in registry.feature_views.values() if fv.batch_source is not None and fv.online
    ]


def _new_plan(
    store: Store | Registry, fv: FeatureView, start: dt.datetime | None, end: dt.datetime | None
) -> Plan:
    assert fv.batch_source is not None
    registry = store if isinstance(store, Registry) else store.registry
    summary = ViewSummary(fv.name, fv.batch_source.type, _source_path(fv))
    return Plan(fv, registry.arrow_schema(fv.name), [], start, end, {}, summary)


def _execute(
    store: Store | None,
    plans: list[Plan],
    *,
    on_error: OnError,
    dry_run: bool,
    progress: bool,
    batch_rows: int,
    started: float,
    kafka: KafkaTarget | None = None,
) -> LoadSummary:
    if on_error not in ("fail", "skip"):
        raise InvalidArgumentError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    result = LoadSummary(
        views=[p.summary for p in plans], dry_run=dry_run, via_kafka=kafka is not None
    )
    for plan in plans:
        _note_skipped_files(plan)
    if dry_run or on_error == "fail":
        # every view is validated before the first write of the run
        for plan in plans:
            t0 = time.perf_counter()
            _validate(
                plan, on_error=on_error, progress=progress, batch_rows=batch_rows, count=dry_run
            )
            plan.summary.seconds += time.perf_counter() - t0
            if dry_run:
                plan.summary.files_read = len(plan.units)
    if not dry_run and kafka is not None:
        for plan in plans:
            t0 = time.perf_counter()
            _publish(kafka, plan, on_error=on_error, progress=progress, batch_rows=batch_rows)
            plan.summary.seconds += time.perf_counter() - t0
    elif not dry_run:
        assert store is not None
        for plan in plans:
            t0 = time.perf_counter()
            _load(store, plan, on_error=on_error, progress=progress, batch_rows=batch_rows)
            plan.summary.seconds += time.perf_counter() - t0
            _record_meta(plan)
    result.seconds = time.perf_counter() - started
    return result


def _record_meta(plan: Plan) -> None:
    wm = plan.meta.get(watermark_key(plan.fv.name))
    if wm is not None:
        plan.summary.watermark = parse_time(wm.decode())
    dv = plan.meta.get(delta_version_key(plan.fv.name))
    if dv is not None:
        plan.summary.delta_version = int(dv.decode())
    assert plan.fv.batch_source is not None
    if plan.fv.batch_source.type in ("iceberg", "hudi"):
        tv = plan.meta.get(table_version_key(plan.fv.name, plan.fv.batch_source.type))
        if tv is not None:
            plan.summary.table_version = int(tv.decode())


def _no_version(fv: FeatureView) -> InvalidArgumentError:
    assert fv.batch_source is not None
    return InvalidArgumentError(
        f"feature view '{fv.name}': as_of_version applies to table formats (Delta, Iceberg, "
        f"Hudi) only (its source is {fv.batch_source.type})"
    )


def materialize(
    store: Store | Registry,
    views: Sequence[str] | str | None = None,
    start: dt.datetime | str | None = None,
    end: dt.datetime | str | None = None,
    *,
    as_of_version: int | None = None,
    on_error: OnError = "fail",
    dry_run: bool = False,
    progress: bool = True,
    batch_rows: int = BATCH_ROWS,
    prune_partitions: bool = True,
    via_kafka: bool = False,
    producer: Any = None,
    bootstrap_servers: str | None = None,
    kafka_config: dict[str, Any] | None = None,
    kafka_timeout: float = KAFKA_TIMEOUT_S,
) -> LoadSummary:
    """Loads rows with ``start <= event timestamp < end`` from each view's batch source.

    ``views=None``: every online view with a batch source. ``start``/``end`` None: unbounded.
    ``as_of_version``: read Delta sources as of that table version (time travel).
    ``on_error="fail"``: a validation pass runs first and bad input raises
    :class:`InvalidArgumentError` (file, column, row) before anything is written;
    ``"skip"``: bad rows are skipped and counted. ``dry_run``: validate only.

    A run that covers everything up to ``end`` (``start`` None or not after the stored
    watermark) advances the view's watermark to ``end`` (now if None), so a later
    :func:`materialize_incremental` continues from there. A full load of a Delta table's latest
    version (no window, no ``as_of_version``) records that version as synced.

    ``via_kafka``: publish the rows to each view's stream-source topic instead of writing them
    (``store`` may then be a :class:`Registry`: no store is opened). Every shard and replica
    consuming the topic applies them through the same path, in the same order, under the same
    merge rule. Validation is the same as for a normal load (bad input fails before the first
    record is produced); a view without a ``stream_source`` is an error. No watermark or Delta
    version is recorded anywhere: the nodes apply the rows only when they consume them, and the
    local store (if any) is not one of them, so a watermark here would claim rows it does not
    hold. Records use :func:`serving.loaders.kafka.encode_key` keys and the
    ``murmur2_random`` partitioner (``producer``: use this one, created with
    :data:`serving.loaders.kafka.PRODUCER_DEFAULTS`; otherwise one per view from its stream
    source, with ``bootstrap_servers`` / ``kafka_config`` overriding its settings). Unless
    ``dry_run``, each view's stream topic must exist and the brokers must answer within
    ``kafka_timeout`` seconds (:class:`StorageError` otherwise) before anything is read.
    Incremental publishing: :func:`materialize_incremental` with ``via_kafka``.
    """
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    t_start, t_end = parse_time(start, now=now), parse_time(end, now=now)
    if t_start is not None and t_end is not None and t_start >= t_end:
        raise InvalidArgumentError(
            f"empty window: start {_iso(t_start)} is not before end {_iso(t_end)}"
        )
    if batch_rows < 1:
        raise InvalidArgumentError(f"batch_rows must be at least 1, got {batch_rows}")
    selected = _select_views(store, views)
    kafka: KafkaTarget | None = None
    if via_kafka:
        kafka = _kafka_target(
            selected,
            KafkaTarget(
                producer, bootstrap_servers, dict(kafka_config or {}), timeout=kafka_timeout
            ),
            dry_run=dry_run,
        )
    elif not isinstance(store, Store):
        raise InvalidArgumentError("materialize needs a Store (a Registry only with via_kafka)")
    plans = []
    for fv in selected:
        assert fv.batch_source is not None
        plan = _new_plan(store, fv, t_start, t_end)
        fmt = TABLE_FORMATS.get(fv.batch_source.type)
        if fmt is not None:
            # a full load of the latest version over an older synced one also applies what
            # was deleted since; windows and time travel never delete nor record a version
            full_latest = t_start is None and t_end is None and as_of_version is None
            synced = None
            if full_latest and isinstance(store, Store) and not via_kafka:
                synced = _get_table_version(store, fv.name, fv.batch_source.type)
            version = fmt.plan(
                plan,
                version=as_of_version,
                synced=synced,
                incremental=False,
                prune_partitions=prune_partitions,
                on_error=on_error,
            )
            if full_latest and not via_kafka and version is not None and fmt.newer(version, synced):
                plan.meta[table_version_key(fv.name, fv.batch_source.type)] = str(version).encode()
        elif as_of_version is not None:
            raise _no_version(fv)
        else:
            _plan_parquet(plan, prune_partitions=prune_partitions, on_error=on_error)
            if not via_kafka:
                assert isinstance(store, Store)
                mark = _get_watermark(store, fv.name)
                plan.summary.watermark = mark
                new = t_end or now
                if (t_start is None or (mark is not None and t_start <= mark)) and (
                    mark is None or new > mark
                ):
                    plan.meta[watermark_key(fv.name)] = _iso(new).encode()
        if via_kafka:
            plan.summary.notes.append(
                f"published to topic '{fv.stream_source.topic if fv.stream_source else ''}'; "
                f"no watermark recorded (the consuming nodes apply the rows)"
            )
        plans.append(plan)
    return _execute(
        store if isinstance(store, Store) else None,
        plans,
        on_error=on_error,
        dry_run=dry_run,
        progress=progress,
        batch_rows=batch_rows,
        started=started,
        kafka=kafka,
    )


def materialize_incremental(
    store: Store | Registry,
    views: Sequence[str] | str | None = None,
    *,
    end: dt.datetime | str | None = None,
    as_of_version: int | None = None,
    on_error: OnError = "fail",
    dry_run: bool = False,
    progress: bool = True,
    batch_rows: int = BATCH_ROWS,
    prune_partitions: bool = True,
    via_kafka: bool = False,
    producer: Any = None,
    bootstrap_servers: str | None = None,
    kafka_config: dict[str, Any] | None = None,
    state_topic: str = STATE_TOPIC,
    kafka_timeout: float = KAFKA_TIMEOUT_S,
) -> LoadSummary:
    """Loads what is new since each view's last successful run.

    Parquet: rows with ``watermark <= event timestamp < end`` (``end`` default now; no watermark
    yet: from the beginning), then the watermark becomes ``end``. Delta: the files added or
    rewritten since the synced table version, up to the latest version (or ``as_of_version``),
    whatever their event time, then that version is recorded; ``end`` does not apply.
    The new watermark / version is written atomically with the view's last batch.

    ``via_kafka``: publish what is new since the last *published* watermark / version to each
    view's stream-source topic instead (``store`` may be a :class:`Registry`; no store is
    opened). The same selection as above, but the state lives in the compacted Kafka topic
    ``state_topic`` on the cluster of the view's stream topic (one record per stream topic and
    view, :mod:`serving.loaders.publish_state`), not in a store; it is recorded only after the
    broker acknowledged every record of the run. Producer settings as for :func:`materialize`;
    ``kafka_timeout`` bounds reaching the brokers and reading / recording the state.
    """
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    t_end = parse_time(end, now=now) or now
    if batch_rows < 1:
        raise InvalidArgumentError(f"batch_rows must be at least 1, got {batch_rows}")
    selected = _select_views(store, views)
    kafka: KafkaTarget | None = None
    if via_kafka:
        kafka = _kafka_target(
            selected,
            KafkaTarget(
                producer,
                bootstrap_servers,
                dict(kafka_config or {}),
                state_topic=state_topic,
                timeout=kafka_timeout,
            ),
            dry_run=dry_run,
        )
    elif not isinstance(store, Store):
        raise InvalidArgumentError(
            "materialize_incremental needs a Store (a Registry only with via_kafka)"
        )
    plans = []
    for fv in selected:
        assert fv.batch_source is not None
        published: PublishState | None = None
        if kafka is not None:
            published = _published_state(kafka, fv, dry_run=dry_run)
        fmt = TABLE_FORMATS.get(fv.batch_source.type)
        if fmt is not None:
            plan = _new_plan(store, fv, None, None)
            if kafka is not None:
                synced = _published_version(plan, published)
            else:
                assert isinstance(store, Store)
                synced = _get_table_version(store, fv.name, fv.batch_source.type)
            version = fmt.plan(
                plan,
                version=as_of_version,
                synced=synced,
                incremental=True,
                prune_partitions=prune_partitions,
                on_error=on_error,
            )
            if version is not None and fmt.newer(version, synced):
                if kafka is not None:
                    plan.publish = _state_of(fv, version=version)
                else:
                    plan.meta[table_version_key(fv.name, fv.batch_source.type)] = str(
                        version
                    ).encode()
            elif fv.batch_source.type == "delta":
                plan.summary.delta_version = synced
            else:
                plan.summary.table_version = synced
        else:
            if as_of_version is not None:
                raise _no_version(fv)
            if kafka is not None:
                mark = published.watermark if published is not None else None
            else:
                assert isinstance(store, Store)
                mark = _get_watermark(store, fv.name)
            plan = _new_plan(store, fv, mark, t_end)
            plan.summary.watermark = mark
            if mark is not None and t_end <= mark:
                done = "published" if kafka is not None else "loaded"
                plan.summary.notes.append(f"already {done} up to {_iso(mark)}")
            else:
                _plan_parquet(plan, prune_partitions=prune_partitions, on_error=on_error)
                if kafka is not None:
                    plan.publish = _state_of(fv, watermark=t_end)
                else:
                    plan.meta[watermark_key(fv.name)] = _iso(t_end).encode()
        if kafka is not None:
            _note_published(plan, published, kafka)
        plans.append(plan)
    result = _execute(
        store if isinstance(store, Store) else None,
        plans,
        on_error=on_error,
        dry_run=dry_run,
        progress=progress,
        batch_rows=batch_rows,
        started=started,
        kafka=kafka,
    )
    if kafka is not None:
        result.state_topic = state_topic
    return result
