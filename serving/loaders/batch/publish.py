"""``via_kafka`` runs: the rows go to each view's stream topic instead of the store, and
incremental runs keep what was published in the state topic (``serving.loaders.publish_state``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from serving.errors import StorageError
from serving.loaders.batch.meta import MAX_REPORTED_ERRORS, READ_AHEAD, OnError, _iso
from serving.loaders.batch.plan import Plan
from serving.loaders.batch.read import _fail, _note_errors, _prepared, _read_ahead
from serving.loaders.progress import Progress, format_count
from serving.loaders.publish_state import PublishState, StateTopic, check_topic
from serving.registry import EVENT_TIMESTAMP, FeatureView

#: librdkafka's own log lines of via-kafka runs (connection retries while a broker is down
#: come many a second; the run's errors say what failed)
RDKAFKA_LOG = logging.getLogger("serving.batch_loader.rdkafka")
#: default deadline of a via-kafka run for reaching the brokers and reading or recording state
KAFKA_TIMEOUT_S = 30.0


@dataclass
class KafkaTarget:
    """Where a ``via_kafka`` run publishes: a given producer (tests, callers that own one), or
    one producer per view created from its stream source (``bootstrap_servers`` and
    ``kafka_config`` override / add librdkafka settings). ``state_topic``: incremental runs
    read and record what was published there (:mod:`serving.loaders.publish_state`), on the
    cluster of each view's stream topic. ``timeout``: deadline for reaching the brokers."""

    producer: Any = None
    bootstrap_servers: str | None = None
    kafka_config: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    state_topic: str | None = None
    timeout: float = KAFKA_TIMEOUT_S
    #: state topics by bootstrap servers (one per cluster)
    states: dict[str, StateTopic] = field(default_factory=dict)

    def client_conf(self, fv: FeatureView) -> dict[str, Any]:
        """Connection settings for ``fv``'s cluster: bootstrap servers, the source's
        connection settings (security, client id) and ``kafka_config``."""
        from serving.loaders.kafka.options import OPTION_PREFIX

        src = fv.stream_source
        assert src is not None
        # consumer-only settings of the source would only draw librdkafka warnings
        shared = ("security.", "sasl.", "ssl.", "client.id", "socket.", "broker.")
        conf: dict[str, Any] = {
            k: v
            for k, v in src.options.items()
            if not k.startswith(OPTION_PREFIX) and k.startswith(shared)
        }
        conf["bootstrap.servers"] = self.bootstrap_servers or src.bootstrap_servers
        conf["logger"] = RDKAFKA_LOG
        conf.update(self.kafka_config)
        return conf

    def check(self, fv: FeatureView) -> None:
        """The view's stream topic exists and the brokers answer within the deadline."""
        assert fv.stream_source is not None
        check_topic(self.client_conf(fv), fv.stream_source.topic, fv.name, self.timeout)

    def state(self, fv: FeatureView, *, create: bool) -> StateTopic:
        """The state topic on ``fv``'s cluster (created if missing and ``create``)."""
        assert self.state_topic is not None
        conf = self.client_conf(fv)
        bootstrap = str(conf["bootstrap.servers"])
        st = self.states.get(bootstrap)
        if st is None:
            st = StateTopic(conf, self.state_topic, self.timeout)
            if create:
                st.ensure()
            self.states[bootstrap] = st
        return st

    def open(self, fv: FeatureView) -> tuple[Any, bool]:
        """(producer, owned) for ``fv``."""
        if self.producer is not None:
            return self.producer, False
        from confluent_kafka import Producer

        from serving.loaders.kafka.options import PRODUCER_DEFAULTS

        conf = self.client_conf(fv)
        conf.update(PRODUCER_DEFAULTS)
        conf.update(self.kafka_config)
        conf["on_delivery"] = self._delivered
        return Producer(conf), True

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None and len(self.failed) < MAX_REPORTED_ERRORS:
            self.failed.append(str(err))
        elif err is not None:
            self.failed.append("")


#: how long the end of a via-kafka run waits for the broker to acknowledge every record
PUBLISH_FLUSH_S = 120.0


def _publish(
    kafka: KafkaTarget, plan: Plan, *, on_error: OnError, progress: bool, batch_rows: int
) -> None:
    """Publish pass: produces every row to the view's stream-source topic, in file order, with
    the same key encoding and partitioner as :func:`serving.loaders.kafka.produce_rows`."""
    from serving.loaders.kafka.produce import produce_rows

    summary, fv = plan.summary, plan.fv
    bar = Progress(f"publish {fv.name}", plan.total_rows, enabled=progress)
    producer, owned = kafka.open(fv)
    seen: set[str] = set()
    try:
        for unit, prep in _read_ahead(
            _prepared(plan, build=True, batch_rows=batch_rows), READ_AHEAD
        ):
            seen.add(unit.label)
            summary.rows_read += prep.in_window
            if prep.bad:
                if on_error == "fail":
                    raise _fail(plan, prep)
                _note_errors(summary, prep)
            if prep.batch is not None and prep.batch.num_rows:
                summary.published += produce_rows(producer, fv, prep.batch, flush=False)
            bar.update(prep.scanned)
            if kafka.failed:  # the broker refuses records: stop producing more
                break
        if plan.deletes is not None and plan.deletes.num_rows and not kafka.failed:
            summary.deleted += _publish_deletes(producer, plan)
        left = producer.flush(PUBLISH_FLUSH_S)
        if left or kafka.failed:
            shown = "; ".join(e for e in kafka.failed if e)
            raise StorageError(
                f"feature view '{fv.name}': publishing to topic "
                f"'{fv.stream_source.topic if fv.stream_source else '?'}' failed: "
                f"{left} records not acknowledged after {PUBLISH_FLUSH_S:.0f} s, "
                f"{len(kafka.failed)} delivery errors{(': ' + shown) if shown else ''}"
                + ("; the state topic is unchanged" if plan.publish is not None else "")
            )
    finally:
        bar.close(
            f"publish {fv.name}: {format_count(summary.rows_read)} rows in window, "
            f"{format_count(summary.published)} published, "
            f"{format_count(summary.errors)} bad rows"
        )
        if owned:
            producer.flush(0)
    summary.files_read = len(seen)
    if plan.publish is not None:  # every record of the plan was acknowledged
        _record_state(kafka, plan, producer, progress=progress)


def _publish_deletes(producer: Any, plan: Plan) -> int:
    """Tombstones for the plan's deleted entities, after its rows. A record's timestamp is in
    milliseconds: rounded up, so the delete is never older than the row it deletes."""
    from serving.loaders.kafka.produce import produce_deletes

    assert plan.deletes is not None
    keys = [k.name for k in plan.fv.join_keys]
    columns = [plan.deletes.column(k).to_pylist() for k in keys]
    micros = plan.deletes.column(EVENT_TIMESTAMP).cast(pa.int64()).to_pylist()
    n = 0
    for i, us in enumerate(micros):
        n += produce_deletes(
            producer,
            plan.fv,
            [[c[i] for c in columns]],
            timestamp=-(-int(us) // 1000),
            flush=False,
        )
    return n


def _record_state(kafka: KafkaTarget, plan: Plan, producer: Any, *, progress: bool) -> None:
    """Records the plan's publish state once every one of its rows was acknowledged."""
    assert plan.publish is not None
    fv, summary = plan.fv, plan.summary
    state = dataclasses.replace(
        plan.publish, published=summary.published, recorded_at=dt.datetime.now(dt.UTC)
    )
    st = kafka.state(fv, create=True)
    st.record(producer, state)
    if state.watermark is not None:
        summary.watermark = state.watermark
    if state.delta_version is not None:
        summary.delta_version = state.delta_version
    if state.table_version is not None:
        summary.table_version = state.table_version
    summary.notes.append(
        f"{state.describe()} recorded in topic '{st.name}' (key "
        f"{state.topic}/{state.view}) after the broker acknowledged every record"
    )
    Progress(f"record {fv.name}", enabled=progress).close(
        f"record {fv.name}: {state.describe()} recorded in topic '{st.name}'"
    )


def _published_state(kafka: KafkaTarget, fv: FeatureView, *, dry_run: bool) -> PublishState | None:
    """What the state topic says was published of ``fv`` (a dry run creates no topic)."""
    assert fv.stream_source is not None
    return kafka.state(fv, create=not dry_run).get(fv.stream_source.topic, fv.name)


def _published_version(plan: Plan, published: PublishState | None) -> int | None:
    """The table version recorded as published (Delta version, Iceberg snapshot, Hudi
    instant), if it is of this view's current table."""
    if published is None:
        return None
    delta = plan.summary.source_type == "delta"
    version = published.delta_version if delta else published.table_version
    if version is None:
        return None
    if published.source_path != plan.summary.path or (
        published.source_type and published.source_type != plan.summary.source_type
    ):
        plan.summary.notes.append(
            f"the published {published.describe()} is of another table "
            f"({published.source_path}): publishing the table as of its latest version"
        )
        return None
    return version


def _state_of(
    fv: FeatureView, *, watermark: dt.datetime | None = None, version: int | None = None
) -> PublishState:
    """The state to record: a watermark (Parquet) or a table version (Delta, Iceberg, Hudi)."""
    assert fv.stream_source is not None
    assert fv.batch_source is not None
    delta = fv.batch_source.type == "delta"
    return PublishState(
        topic=fv.stream_source.topic,
        view=fv.name,
        source_type=fv.batch_source.type,
        source_path=fv.batch_source.location,
        watermark=watermark,
        delta_version=version if delta else None,
        table_version=None if delta else version,
    )


def _note_published(plan: Plan, published: PublishState | None, kafka: KafkaTarget) -> None:
    topic = plan.fv.stream_source.topic if plan.fv.stream_source else "?"
    if published is None:
        since = f"nothing recorded for it in topic '{kafka.state_topic}': from the beginning"
    else:
        at = _iso(published.recorded_at) if published.recorded_at else "?"
        since = (
            f"continuing from the {published.describe()} recorded in topic "
            f"'{kafka.state_topic}' at {at}"
        )
    plan.summary.notes.insert(0, f"publishing to topic '{topic}'; {since}")
