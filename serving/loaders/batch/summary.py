"""What a batch run reports: per view and in all (:class:`LoadSummary`, printed by the CLI)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from serving.loaders.progress import format_count, format_duration


@dataclass(frozen=True)
class RowError:
    """One bad row (``row`` is 0-based within ``file``; None when a whole file was skipped)."""

    file: str
    row: int | None
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "whole file"
        return f"{self.file}: {where}: column '{self.column}': {self.reason}"


@dataclass
class ViewSummary:
    view: str
    source_type: str
    path: str
    #: rows read from the source that fall in the window (including bad rows)
    rows_read: int = 0
    written: int = 0
    #: rows published to the view's stream-source topic (``via_kafka`` runs; nothing is written)
    published: int = 0
    #: rows not written because the store holds a newer (or the same) event for the key
    skipped_older: int = 0
    #: bad rows skipped (``on_error="skip"``) or found by a dry run
    errors: int = 0
    #: data files read / skipped without opening their data (partition or statistics pruning)
    files_read: int = 0
    files_pruned: int = 0
    seconds: float = 0.0
    #: event-time watermark stored by this run (or the existing one)
    watermark: dt.datetime | None = None
    #: Delta table version read, and the version stored as synced by this run
    delta_version: int | None = None
    #: the same for Iceberg (snapshot id) and Hudi (instant) sources
    table_version: int | None = None
    #: tombstones applied (or published) for entities deleted in the source
    deleted: int = 0
    first_errors: list[RowError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoadSummary:
    views: list[ViewSummary] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0
    #: the rows were published to the views' stream-source topics instead of written
    via_kafka: bool = False
    #: incremental via-kafka runs: the topic the published watermarks are recorded in
    state_topic: str | None = None

    def view(self, name: str) -> ViewSummary:
        for v in self.views:
            if v.view == name:
                return v
        raise KeyError(name)

    def __getitem__(self, name: str) -> ViewSummary:
        return self.view(name)

    @property
    def rows_read(self) -> int:
        return sum(v.rows_read for v in self.views)

    @property
    def written(self) -> int:
        return sum(v.written for v in self.views)

    @property
    def published(self) -> int:
        return sum(v.published for v in self.views)

    @property
    def skipped_older(self) -> int:
        return sum(v.skipped_older for v in self.views)

    @property
    def errors(self) -> int:
        return sum(v.errors for v in self.views)

    @property
    def files_read(self) -> int:
        return sum(v.files_read for v in self.views)

    def __str__(self) -> str:
        head = (
            "view",
            "source",
            "read",
            "published" if self.via_kafka else "written",
            "older",
            "errors",
            "files",
            "seconds",
            "synced",
        )
        rows: list[tuple[str, ...]] = [head]
        for v in self.views:
            if v.delta_version is not None:
                synced = f"version {v.delta_version}"
            elif v.table_version is not None:
                what = {"iceberg": "snapshot", "hudi": "instant"}.get(v.source_type, "version")
                synced = f"{what} {v.table_version}"
            elif v.watermark is not None:
                synced = v.watermark.isoformat().replace("+00:00", "Z")
            else:
                synced = "-"
            rows.append(
                (
                    v.view,
                    v.source_type,
                    format_count(v.rows_read),
                    format_count(v.published if self.via_kafka else v.written),
                    format_count(v.skipped_older),
                    format_count(v.errors),
                    f"{v.files_read}" + (f" (+{v.files_pruned} pruned)" if v.files_pruned else ""),
                    f"{v.seconds:.2f}",
                    synced,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        what = "dry run (nothing written)" if self.dry_run else "total"
        if self.via_kafka and not self.dry_run:
            progress = (
                f"progress recorded in Kafka topic '{self.state_topic}'"
                if self.state_topic
                else "no watermark advanced here"
            )
            lines.append(
                f"{what}: {format_count(self.rows_read)} rows read, "
                f"{format_count(self.published)} published to Kafka (the nodes apply them as "
                f"they consume; {progress}), {format_count(self.errors)} bad "
                f"rows, {format_duration(self.seconds)} ({format_count(rate)} rows/s)"
            )
        else:
            lines.append(
                f"{what}: {format_count(self.rows_read)} rows read, {format_count(self.written)} "
                f"written, {format_count(self.skipped_older)} skipped as older, "
                f"{format_count(self.errors)} bad rows, {format_duration(self.seconds)} "
                f"({format_count(rate)} rows/s)"
            )
        deleted = sum(v.deleted for v in self.views)
        if deleted:
            done = "published as tombstones" if self.via_kafka else "deleted (tombstones)"
            lines.append(f"{format_count(deleted)} entities {done}")
        for v in self.views:
            lines.extend(f"{v.view}: {note}" for note in v.notes)
            if v.errors:
                lines.append(f"{v.view}: first bad rows ({v.errors} in all):")
                lines.extend(f"  {e}" for e in v.first_errors)
        return "\n".join(lines)
