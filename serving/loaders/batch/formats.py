"""The table formats a batch source can be (Delta Lake, Apache Iceberg, Apache Hudi): each one
module behind the same four functions, so a run, an incremental sync and ``diff`` treat them
alike. A version is an integer: the Delta table version, the Iceberg snapshot id, the Hudi
instant."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from serving.loaders.batch import delta, hudi, iceberg
from serving.registry import FeatureView


@dataclass(frozen=True)
class TableFormat:
    name: str
    #: what a version is called: "version", "snapshot", "instant"
    version_word: str
    #: ``(plan, *, version, synced, incremental, prune_partitions, on_error) -> version read``
    plan: Callable[..., int | None]
    #: ``(view, version or None for the latest, source columns) -> the rows at that version``
    read_version: Callable[[FeatureView, int | None, list[str]], pa.Table]
    latest_version: Callable[[FeatureView], int | None]
    #: versions grow with time (Delta, Hudi); Iceberg snapshot ids do not
    ordered: bool

    def newer(self, version: int, synced: int | None) -> bool:
        """Whether ``version`` is to be recorded over the ``synced`` one."""
        if synced is None:
            return True
        return version > synced if self.ordered else version != synced


def _plan_delta(plan: Any, **kw: Any) -> int | None:
    return delta._plan_delta(plan, **kw)


TABLE_FORMATS: dict[str, TableFormat] = {
    "delta": TableFormat(
        "Delta", "version", _plan_delta, delta.read_version, delta.latest_version, True
    ),
    "iceberg": TableFormat(
        "Iceberg",
        "snapshot",
        iceberg.plan_iceberg,
        iceberg.read_version,
        iceberg.latest_version,
        False,
    ),
    "hudi": TableFormat(
        "Hudi", "instant", hudi.plan_hudi, hudi.read_version, hudi.latest_version, True
    ),
}
