"""The declarative registry: ``features.yaml`` parsed into frozen dataclasses and validated.

Everything downstream (the Rust core, the loaders, both frontends) trusts a :class:`Registry`
blindly, so every check happens here, once, and the first bad entry is reported with its path
(``feature_views[2].features[5].dtype``), its file and line, and a did-you-mean when a near name
exists. See the repository's ``features.yaml`` for a commented example of the format.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

import pyarrow as pa
import yaml

from serving.errors import InvalidArgumentError, NotFoundError, RegistryError

__all__ = [
    "EVENT_TIMESTAMP",
    "FEATURE_DTYPES",
    "JOIN_KEY_DTYPES",
    "BatchSource",
    "Entity",
    "Feature",
    "FeatureRef",
    "FeatureService",
    "FeatureView",
    "JoinKey",
    "OnDemandFeatureView",
    "Registry",
    "StreamSource",
    "VectorIndex",
    "parse_ttl",
]

FEATURE_DTYPES: tuple[str, ...] = (
    "bool",
    "int32",
    "int64",
    "float32",
    "float64",
    "string",
    "bytes",
    "timestamp",
    "float32_array",
)
JOIN_KEY_DTYPES: tuple[str, ...] = ("int32", "int64", "string", "bytes")
VECTOR_METRICS: tuple[str, ...] = ("cosine", "l2", "inner_product")
VECTOR_INDEX_KINDS: tuple[str, ...] = ("exact", "hnsw")
#: vector_index parameters: (smallest, largest) accepted value; only hnsw reads m / ef_*
VECTOR_INDEX_INTS: dict[str, tuple[int, int]] = {
    "m": (2, 128),
    "ef_construction": (8, 4096),
    "ef_search": (1, 4096),
    "max_k": (1, 10_000),
}
BATCH_SOURCE_TYPES: tuple[str, ...] = ("parquet", "delta", "iceberg", "hudi")
STREAM_SOURCE_TYPES: tuple[str, ...] = ("kafka",)
STREAM_FORMATS: tuple[str, ...] = ("json", "protobuf")
#: how an on-demand view's transform takes and returns its batch (docs/on-demand.md)
TRANSFORM_MODES: tuple[str, ...] = ("pyarrow", "pandas")
#: the types request data can carry (JSON and Feast's Value have nothing else one-to-one)
REQUEST_FIELD_DTYPES: tuple[str, ...] = ("bool", "int32", "int64", "float32", "float64", "string")
#: column every write carries next to the join keys; features must not shadow it
#: destinations of served-feature logs (docs/feature-logging.md)
LOG_DESTINATION_TYPES: tuple[str, ...] = ("delta", "parquet", "kafka")
EVENT_TIMESTAMP = "event_timestamp"
MAX_DIM = 65535
# A typo like f{0..99999999} would otherwise build a registry the core cannot hold.
MAX_BRACE_EXPANSION = 100_000
# The core keeps timestamps as i64 microseconds; a larger TTL would overflow its arithmetic.
MAX_TTL_SECONDS = (2**63 - 1) // 1_000_000

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACE_RE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_TTL_PART_RE = re.compile(r"(\d+)([smhdw])")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Kafka's own rule for topic names.
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_UTC_US = pa.timestamp("us", tz="UTC")


# --------------------------------------------------------------------------------------------
# public model


@dataclass(frozen=True)
class JoinKey:
    name: str
    dtype: str


@dataclass(frozen=True)
class Entity:
    name: str
    join_keys: tuple[JoinKey, ...]
    description: str = ""


@dataclass(frozen=True)
class VectorIndex:
    """``vector_index:`` of a float32_array feature (docs/vector-search.md)."""

    metric: str = "cosine"
    kind: str = "hnsw"
    #: HNSW: links per node
    m: int = 16
    #: HNSW: candidate list while inserting
    ef_construction: int = 128
    #: HNSW: candidate list while searching (at least k is used)
    ef_search: int = 64
    #: the largest k a SearchNearest request may ask for
    max_k: int = 1000

    def to_core(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "kind": self.kind,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "max_k": self.max_k,
        }


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str
    dim: int | None = None
    description: str = ""
    vector_index: VectorIndex | None = None


@dataclass(frozen=True)
class BatchSource:
    type: str
    #: Parquet / Delta / Hudi: the file, directory or table URI; Iceberg: a metadata file (or
    #: the table directory holding metadata/), empty when the table is named in a catalog
    path: str
    timestamp_field: str = EVENT_TIMESTAMP
    #: Iceberg: ``namespace.table`` in ``catalog``
    table: str = ""
    #: Iceberg: the catalog's properties (pyiceberg's ``load_catalog``: type, uri, warehouse...)
    catalog: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def location(self) -> str:
        """What the source is called in messages and summaries."""
        if self.table:
            return f"{self.catalog.get('type', 'catalog')}:{self.table}"
        return self.path


@dataclass(frozen=True)
class StreamSource:
    type: str
    topic: str
    bootstrap_servers: str
    group_id: str = "feature-serving"
    format: str = "json"
    # excluded from the hash: a mapping is unhashable, and views are handy as dict keys
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)


@dataclass(frozen=True)
class FeatureRef:
    view: str
    feature: str

    def __str__(self) -> str:
        return f"{self.view}:{self.feature}"


@dataclass(frozen=True)
class FeatureView:
    name: str
    entities: tuple[str, ...]
    join_keys: tuple[JoinKey, ...]
    features: tuple[Feature, ...]
    ttl_seconds: int = 0
    batch_source: BatchSource | None = None
    stream_source: StreamSource | None = None
    online: bool = True
    description: str = ""
    #: the Feast push source name that `POST /push` writes this view through (None: none)
    push_source: str | None = None
    #: the write-time on-demand view whose outputs this view stores (None: an ordinary view)
    derived_by: str | None = None
    _by_name: Mapping[str, Feature] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {f.name: f for f in self.features})

    def feature(self, name: str) -> Feature:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFoundError(
                f"feature '{name}' not found in view '{self.name}'{_hint(name, self._by_name)}"
            ) from None

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


@dataclass(frozen=True)
class LogDestination:
    """Where a feature service's served-feature logs go: a Delta table or a Parquet dataset
    (``path``, partitioned by ``__log_date``), or a Kafka topic (JSON rows keyed by the
    request id)."""

    type: str
    path: str = ""
    topic: str = ""
    bootstrap_servers: str = ""


@dataclass(frozen=True)
class ServiceLogging:
    """A feature service's ``logging:`` block (docs/feature-logging.md)."""

    sample_rate: float
    destinations: tuple[LogDestination, ...]
    #: the background writer flushes when this much time passed or this many rows wait
    flush_interval_seconds: float = 5.0
    flush_rows: int = 65_536
    #: rows the in-memory buffer holds at most; past it a request's rows are dropped (counted)
    buffer_rows: int = 262_144


@dataclass(frozen=True)
class FeatureService:
    name: str
    features: tuple[FeatureRef, ...]
    description: str = ""
    logging: ServiceLogging | None = None


@dataclass(frozen=True)
class OnDemandFeatureView:
    """A Python transform over a whole batch: stored features of other views plus request
    fields in, typed ``features`` out (docs/on-demand.md).

    Request-time (the default): run once per request by the frontend, outputs answered beside
    the stored features. ``write_to_online_store``: run when rows of its one source view are
    written; the outputs are stored under this name as a feature view's and served like one."""

    name: str
    sources: tuple[FeatureRef, ...]
    request_fields: tuple[Feature, ...]
    features: tuple[Feature, ...]
    #: ``module:function`` as written in the registry
    transform: str
    mode: str = "pyarrow"
    static_artifacts: str | None = None
    write_to_online_store: bool = False
    description: str = ""
    #: the request source's name (Feast names them); "" when there is none
    request_source: str = ""
    #: ``file:line`` of the entry, for errors raised when the transform runs
    where: str = ""
    #: the imported transform and static-artifacts functions
    function: Callable[..., Any] = field(default=lambda *a: None, compare=False, hash=False)
    artifacts_function: Callable[[], Any] | None = field(default=None, compare=False, hash=False)

    @property
    def source_view(self) -> str:
        """The one view a write-time transform derives from."""
        return self.sources[0].view


@dataclass(frozen=True)
class Registry:
    project: str
    entities: Mapping[str, Entity]
    feature_views: Mapping[str, FeatureView]
    feature_services: Mapping[str, FeatureService] = field(
        default_factory=lambda: MappingProxyType({})
    )
    source_path: str | None = None
    #: every on-demand view; a write-time one is also in ``feature_views`` (it is stored)
    on_demand_views: Mapping[str, OnDemandFeatureView] = field(
        default_factory=lambda: MappingProxyType({})
    )

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], *, reload_transforms: bool = False
    ) -> Registry:
        """``reload_transforms``: import the on-demand views' modules again (by default a
        module imported once, by an earlier load in this process, is used as it is)."""
        shown = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise RegistryError(f"{shown}: cannot read registry file: {e.strerror or e}") from e
        absolute = os.path.abspath(shown)
        data, lines = _load_yaml(text, shown)
        parser = _Parser(os.path.dirname(absolute), shown, lines, reload_transforms)
        return parser.registry(data, absolute)

    @classmethod
    def from_yaml_text(cls, text: str, base_dir: str | None = None) -> Registry:
        data, lines = _load_yaml(text, None)
        return _Parser(_base(base_dir), None, lines).registry(data, None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | None = None) -> Registry:
        return _Parser(_base(base_dir), None, {}).registry(data, None)

    # -- lookups ---------------------------------------------------------------------------

    def view(self, name: str) -> FeatureView:
        try:
            return self.feature_views[name]
        except KeyError:
            raise NotFoundError(
                f"feature view '{name}' not found{_hint(name, self.feature_views)}"
            ) from None

    def write_time_views(self, source_view: str) -> tuple[OnDemandFeatureView, ...]:
        """The write-time on-demand views derived from ``source_view``'s rows."""
        return tuple(
            o
            for o in self.on_demand_views.values()
            if o.write_to_online_store and o.source_view == source_view
        )

    def push_views(self, push_source: str) -> tuple[FeatureView, ...]:
        """The views that declare ``push_source`` (Feast pushes to every one of them)."""
        views = tuple(v for v in self.feature_views.values() if v.push_source == push_source)
        if not views:
            names = {v.push_source: v for v in self.feature_views.values() if v.push_source}
            raise NotFoundError(
                f"push source '{push_source}' not found (no feature view declares it as "
                f"push_source){_hint(push_source, names)}"
            )
        return views

    def service(self, name: str) -> FeatureService:
        try:
            return self.feature_services[name]
        except KeyError:
            raise NotFoundError(
                f"feature service '{name}' not found{_hint(name, self.feature_services)}"
            ) from None

    def resolve_refs(self, refs: Sequence[str]) -> tuple[FeatureRef, ...]:
        """Parse ``view:feature`` / ``view:*`` strings, in order (duplicates are kept)."""
        if isinstance(refs, str):
            # A bare string is a Sequence[str] too and would silently resolve its characters.
            raise InvalidArgumentError(f"expected a list of feature references, got '{refs}'")
        out: list[FeatureRef] = []
        for ref in refs:
            if not isinstance(ref, str):
                raise InvalidArgumentError(
                    f"feature reference must be a string, got {_kind(ref)} {ref!r}"
                )
            view_name, sep, feature_name = ref.partition(":")
            if not sep or not view_name or not feature_name:
                raise InvalidArgumentError(
                    f"invalid feature reference '{ref}' (expected 'view:feature' or 'view:*')"
                )
            view: FeatureView | OnDemandFeatureView | None = self.feature_views.get(view_name)
            if view is None:
                view = self.on_demand_views.get(view_name)
            if view is None:
                raise NotFoundError(
                    f"feature reference '{ref}': feature view '{view_name}' not found"
                    f"{_hint(view_name, [*self.feature_views, *self.on_demand_views])}"
                )
            names = {f.name for f in view.features}
            if feature_name == "*":
                out.extend(FeatureRef(view_name, f.name) for f in view.features)
            elif feature_name in names:
                out.append(FeatureRef(view_name, feature_name))
            else:
                raise NotFoundError(
                    f"feature reference '{ref}': feature '{feature_name}' not found in view "
                    f"'{view_name}'{_hint(feature_name, sorted(names))}"
                )
        return tuple(out)

    # -- exports ---------------------------------------------------------------------------

    def arrow_schema(self, view: str) -> pa.Schema:
        """The schema the store's write path expects: join keys, event_timestamp, features."""
        v = self.view(view)
        fields = [pa.field(k.name, _JOIN_KEY_ARROW[k.dtype]) for k in v.join_keys]
        fields.append(pa.field(EVENT_TIMESTAMP, _UTC_US))
        fields.extend(pa.field(f.name, _feature_arrow_type(f)) for f in v.features)
        return pa.schema(fields)

    def to_core_json(self) -> str:
        """The registry as the Rust core consumes it (sources and descriptions left out)."""
        doc = {
            "project": self.project,
            "feature_views": [
                {
                    "name": v.name,
                    "join_keys": [{"name": k.name, "dtype": k.dtype} for k in v.join_keys],
                    "ttl_seconds": v.ttl_seconds,
                    "features": [_feature_core(f) for f in v.features],
                }
                for v in self.feature_views.values()
            ],
            "feature_services": [
                {
                    "name": s.name,
                    "features": [{"view": r.view, "feature": r.feature} for r in s.features],
                }
                for s in self.feature_services.values()
            ],
            "on_demand_feature_views": [
                {
                    "name": o.name,
                    "sources": [{"view": r.view, "feature": r.feature} for r in o.sources],
                    "request_fields": [
                        {"name": f.name, "dtype": f.dtype} for f in o.request_fields
                    ],
                    "features": [
                        {"name": f.name, "dtype": f.dtype, "dim": f.dim} for f in o.features
                    ],
                }
                for o in self.on_demand_views.values()
                if not o.write_to_online_store
            ],
        }
        return json.dumps(doc, separators=(",", ":"))


_JOIN_KEY_ARROW: Mapping[str, pa.DataType] = {
    "int32": pa.int32(),
    "int64": pa.int64(),
    "string": pa.string(),
    "bytes": pa.binary(),
}
_FEATURE_ARROW: Mapping[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bytes": pa.binary(),
    "timestamp": _UTC_US,
}


def _feature_core(f: Feature) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name, "dtype": f.dtype, "dim": f.dim}
    if f.vector_index is not None:
        out["vector_index"] = f.vector_index.to_core()
    return out


def _feature_arrow_type(f: Feature) -> pa.DataType:
    if f.dtype == "float32_array":
        assert f.dim is not None  # guaranteed by validation
        return pa.list_(pa.float32(), f.dim)
    return _FEATURE_ARROW[f.dtype]


def parse_ttl(value: object) -> int:
    """TTL in seconds from ``None``, an int, or a string such as ``"90s"``, ``"2h"``, ``"1h30m"``.

    Raises ``ValueError`` with a human message; the parser adds the entry's path.
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"expected seconds (int) or a duration string like '90s', '15m', '2h', '30d', "
            f"got {_kind(value)} {value!r}"
        )
    if isinstance(value, int):
        seconds = value
    elif value.strip().isdigit():
        seconds = int(value.strip())
    else:
        text = value.strip()
        parts = list(_TTL_PART_RE.finditer(text))
        if not parts or "".join(p.group(0) for p in parts) != text:
            raise ValueError(
                f"invalid duration '{value}' (expected e.g. '90s', '15m', '2h', '30d', '1h30m'; "
                f"units s, m, h, d, w)"
            )
        seconds = sum(int(p.group(1)) * _TTL_UNITS[p.group(2)] for p in parts)
    if seconds < 0:
        raise ValueError(f"must not be negative, got {seconds}")
    if seconds > MAX_TTL_SECONDS:
        raise ValueError(f"too large ({seconds} s; at most {MAX_TTL_SECONDS})")
    return seconds


# --------------------------------------------------------------------------------------------
# helpers shared by lookups and validation


def _hint(name: str, choices: Iterator[str] | Mapping[str, Any] | Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def did_you_mean(name: str, choices: Iterator[str] | Mapping[str, Any] | Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, else nothing."""
    return _hint(name, choices)


def _semi_hint(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _kind(value: object) -> str:
    """The YAML-level name of a value's type, for messages read by people who wrote YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _base(base_dir: str | None) -> str:
    return os.path.abspath(base_dir if base_dir is not None else os.getcwd())


def _malformed(pattern: str) -> str:
    return f"malformed brace range in '{pattern}' (expected {{START..END}}, e.g. f{{000..199}})"


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{START..END}`` ranges (left to right, cartesian), bash style.

    A bound written with a leading zero pads every number to the wider bound's width, so
    ``f{000..199}`` gives ``f000`` .. ``f199``. Raises ``ValueError`` for malformed ranges.
    """
    m = _BRACE_RE.search(pattern)
    if m is None:
        if "{" in pattern or "}" in pattern:
            raise ValueError(_malformed(pattern))
        return [pattern]
    lo_text, hi_text = m.group(1), m.group(2)
    lo, hi = int(lo_text), int(hi_text)
    if lo > hi:
        raise ValueError(f"brace range start {lo} is greater than end {hi} in '{pattern}'")
    padded = any(len(t) > 1 and t.startswith("0") for t in (lo_text, hi_text))
    width = max(len(lo_text), len(hi_text)) if padded else 0
    head, rest = pattern[: m.start()], pattern[m.end() :]
    if "{" in head or "}" in head:
        raise ValueError(_malformed(pattern))
    tails = expand_braces(rest)
    if (hi - lo + 1) * len(tails) > MAX_BRACE_EXPANSION:
        raise ValueError(
            f"'{pattern}' expands to {(hi - lo + 1) * len(tails)} names "
            f"(at most {MAX_BRACE_EXPANSION})"
        )
    return [f"{head}{n:0{width}d}{t}" for n, t in itertools.product(range(lo, hi + 1), tails)]


# --------------------------------------------------------------------------------------------
# YAML loading with line numbers

# (id(container), key or index) -> 1-based line. Containers stay alive for the whole parse, so
# their ids are stable; scalars are located through their parent because they may be interned.
_Lines = Mapping[tuple[int, object], int]


class _LineLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[tuple[int, object], int] = {}


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping keys must be strings, got {_kind(key)}", key_node.start_mark
            )
        if key in out:
            # PyYAML keeps the last duplicate silently, which hides typos like two `ttl:` lines.
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        loader.lines[(id(out), key)] = key_node.start_mark.line + 1
    loader.lines[(id(out), None)] = node.start_mark.line + 1
    return out


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> list[Any]:
    out: list[Any] = []
    for i, child in enumerate(node.value):
        out.append(loader.construct_object(child, deep=True))
        loader.lines[(id(out), i)] = child.start_mark.line + 1
    loader.lines[(id(out), None)] = node.start_mark.line + 1
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _load_yaml(text: str, source: str | None) -> tuple[Any, _Lines]:
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = _where(source, mark.line + 1 if mark is not None else None)
        problem = getattr(e, "problem", None) or str(e)
        raise RegistryError(f"{where}invalid YAML: {problem}") from e
    finally:
        loader.dispose()
    return data, loader.lines


def _where(source: str | None, line: int | None) -> str:
    if source is not None:
        return f"{source}:{line}: " if line is not None else f"{source}: "
    return f"line {line}: " if line is not None else ""


# --------------------------------------------------------------------------------------------
# validation


@dataclass(frozen=True)
class _Loc:
    path: str
    line: int | None


class _Parser:
    def __init__(
        self, base_dir: str, source: str | None, lines: _Lines, reload_transforms: bool = False
    ) -> None:
        self.base_dir = base_dir
        self.source = source
        self.lines = lines
        self.reload_transforms = reload_transforms

    # -- primitives ------------------------------------------------------------------------

    def fail(self, loc: _Loc, message: str) -> NoReturn:
        prefix = f"{loc.path}: " if loc.path else ""
        raise RegistryError(f"{_where(self.source, loc.line)}{prefix}{message}")

    def child(self, loc: _Loc, container: object, key: str | int) -> _Loc:
        path = f"{loc.path}[{key}]" if isinstance(key, int) else _join(loc.path, key)
        return _Loc(path, self.lines.get((id(container), key), loc.line))

    def mapping(
        self, loc: _Loc, value: object, required: Sequence[str], optional: Sequence[str]
    ) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(loc, f"expected a mapping, got {_kind(value)}")
        allowed = (*required, *optional)
        for key in value:
            if not isinstance(key, str):
                self.fail(loc, f"keys must be strings, got {_kind(key)} {key!r}")
            if key not in allowed:
                hint = _semi_hint(key, allowed)
                self.fail(
                    self.child(loc, value, key),
                    f"unknown key '{key}' (allowed: {', '.join(allowed)}{hint})",
                )
        for key in required:
            if key not in value:
                self.fail(loc, f"missing required key '{key}'")
        return value

    def sequence(self, loc: _Loc, value: object, *, allow_empty: bool = False) -> Sequence[Any]:
        if not isinstance(value, list | tuple):
            self.fail(loc, f"expected a list, got {_kind(value)}")
        if not value and not allow_empty:
            self.fail(loc, "must not be empty")
        return value

    def string(self, loc: _Loc, value: object, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            extra = ""
            if isinstance(value, bool):
                extra = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
            self.fail(loc, f"expected a string, got {_kind(value)} {value!r}{extra}")
        if not value.strip() and not allow_empty:
            self.fail(loc, "must not be empty")
        return value

    def name(self, loc: _Loc, value: object, what: str) -> str:
        text = self.string(loc, value)
        if not _NAME_RE.fullmatch(text):
            self.fail(loc, f"invalid {what} name '{text}' (must match [A-Za-z_][A-Za-z0-9_]*)")
        return text

    def choice(self, loc: _Loc, value: object, choices: Sequence[str], what: str) -> str:
        text = self.string(loc, value)
        if text not in choices:
            self.fail(
                loc,
                f"unknown {what} '{text}' "
                f"(expected one of {', '.join(choices)}{_semi_hint(text, choices)})",
            )
        return text

    def boolean(self, loc: _Loc, value: object) -> bool:
        if not isinstance(value, bool):
            self.fail(loc, f"expected true or false, got {_kind(value)} {value!r}")
        return value

    def opt_str(self, loc: _Loc, m: Mapping[str, Any], key: str, default: str = "") -> str:
        if m.get(key) is None:
            return default
        return self.string(self.child(loc, m, key), m[key], allow_empty=True)

    def unique(self, seen: dict[str, str], name: str, loc: _Loc, what: str) -> None:
        if name in seen:
            self.fail(loc, f"duplicate {what} '{name}' (first defined at {seen[name]})")
        seen[name] = loc.path

    # -- document --------------------------------------------------------------------------

    def registry(self, data: object, source_path: str | None) -> Registry:
        root = _Loc("", self.lines.get((id(data), None)))
        if data is None:
            self.fail(
                root,
                "the registry is empty (expected a mapping with project, entities, feature_views)",
            )
        top = self.mapping(
            root,
            data,
            ("project", "entities", "feature_views"),
            ("feature_services", "on_demand_feature_views"),
        )
        project = self.name(self.child(root, top, "project"), top["project"], "project")

        entities: dict[str, Entity] = {}
        loc = self.child(root, top, "entities")
        seen: dict[str, str] = {}
        for i, raw in enumerate(self.sequence(loc, top["entities"])):
            entity = self.entity(self.child(loc, top["entities"], i), raw, seen)
            entities[entity.name] = entity

        views: dict[str, FeatureView] = {}
        loc = self.child(root, top, "feature_views")
        seen = {}
        for i, raw in enumerate(self.sequence(loc, top["feature_views"])):
            view = self.view(self.child(loc, top["feature_views"], i), raw, entities, seen)
            views[view.name] = view

        on_demand: dict[str, OnDemandFeatureView] = {}
        raw_odfvs = top.get("on_demand_feature_views")
        if raw_odfvs is not None:
            loc = self.child(root, top, "on_demand_feature_views")
            view_seen = {n: f"feature_views ({n})" for n in views}
            for i, raw in enumerate(self.sequence(loc, raw_odfvs, allow_empty=True)):
                odfv = self.on_demand(self.child(loc, raw_odfvs, i), raw, views, view_seen)
                on_demand[odfv.name] = odfv
            for o in list(on_demand.values()):
                if o.write_to_online_store:
                    src = views[o.source_view]
                    views[o.name] = FeatureView(
                        name=o.name,
                        entities=src.entities,
                        join_keys=src.join_keys,
                        features=o.features,
                        ttl_seconds=src.ttl_seconds,
                        description=o.description,
                        derived_by=o.name,
                    )

        services: dict[str, FeatureService] = {}
        raw_services = top.get("feature_services")
        if raw_services is not None:
            loc = self.child(root, top, "feature_services")
            seen = {}
            servable: dict[str, FeatureView | OnDemandFeatureView] = {**on_demand, **views}
            for i, raw in enumerate(self.sequence(loc, raw_services, allow_empty=True)):
                svc = self.service(self.child(loc, raw_services, i), raw, servable, seen)
                services[svc.name] = svc

        return Registry(
            project=project,
            entities=MappingProxyType(entities),
            feature_views=MappingProxyType(views),
            feature_services=MappingProxyType(services),
            source_path=source_path,
            on_demand_views=MappingProxyType(on_demand),
        )

    def on_demand(
        self,
        loc: _Loc,
        raw: object,
        views: Mapping[str, FeatureView],
        seen: dict[str, str],
    ) -> OnDemandFeatureView:
        m = self.mapping(
            loc,
            raw,
            ("name", "sources", "features", "transform"),
            (
                "request_source",
                "mode",
                "static_artifacts",
                "write_to_online_store",
                "description",
            ),
        )
        name_loc = self.child(loc, m, "name")
        name = self.name(name_loc, m["name"], "on-demand feature view")
        self.unique(seen, name, name_loc, "view name")

        src_loc = self.child(loc, m, "sources")
        sources = self.ref_list(loc, m, "sources", views, "source feature")

        request_fields: list[Feature] = []
        request_name = ""
        if m.get("request_source") is not None:
            rs_loc = self.child(loc, m, "request_source")
            rs = self.mapping(rs_loc, m["request_source"], ("schema",), ("name",))
            request_name = self.opt_str(rs_loc, rs, "name")
            schema_loc = self.child(rs_loc, rs, "schema")
            field_seen: dict[str, str] = {}
            for i, raw_f in enumerate(self.sequence(schema_loc, rs["schema"])):
                floc = self.child(schema_loc, rs["schema"], i)
                fm = self.mapping(floc, raw_f, ("name", "dtype"), ("description",))
                fname_loc = self.child(floc, fm, "name")
                fname = self.name(fname_loc, fm["name"], "request field")
                self.unique(field_seen, fname, fname_loc, "request field")
                for v in {views[r.view].name for r in sources}:
                    if any(k.name == fname for k in views[v].join_keys):
                        self.fail(
                            fname_loc,
                            f"request field '{fname}' is a join key of source view '{v}'",
                        )
                dtype = self.choice(
                    self.child(floc, fm, "dtype"), fm["dtype"], REQUEST_FIELD_DTYPES, "type"
                )
                request_fields.append(
                    Feature(fname, dtype, None, self.opt_str(floc, fm, "description"))
                )

        feats_loc = self.child(loc, m, "features")
        features = self.feature_list(loc, m, {})

        mode = "pyarrow"
        if m.get("mode") is not None:
            mode = self.choice(self.child(loc, m, "mode"), m["mode"], TRANSFORM_MODES, "mode")
        write_time = False
        if m.get("write_to_online_store") is not None:
            wloc = self.child(loc, m, "write_to_online_store")
            write_time = self.boolean(wloc, m["write_to_online_store"])
        if write_time:
            owners = sorted({r.view for r in sources})
            if len(owners) > 1:
                self.fail(
                    src_loc,
                    "a write-time on-demand view (write_to_online_store: true) derives from one "
                    f"feature view's rows; these sources come from {', '.join(owners)}",
                )
            if request_fields:
                self.fail(
                    self.child(loc, m, "request_source"),
                    "a write-time on-demand view has no request: request_source is only for "
                    "request-time views",
                )
            src = views[owners[0]]
            for f in features:
                if any(k.name == f.name for k in src.join_keys):
                    self.fail(feats_loc, f"feature name '{f.name}' collides with a join key")

        transform_loc = self.child(loc, m, "transform")
        transform = self.string(transform_loc, m["transform"])
        function = self.import_callable(transform_loc, transform, "transform")
        artifacts = None
        artifacts_spec = None
        if m.get("static_artifacts") is not None:
            aloc = self.child(loc, m, "static_artifacts")
            artifacts_spec = self.string(aloc, m["static_artifacts"])
            artifacts = self.import_callable(aloc, artifacts_spec, "static_artifacts")
        return OnDemandFeatureView(
            name=name,
            sources=tuple(sources),
            request_fields=tuple(request_fields),
            features=tuple(features),
            transform=transform,
            mode=mode,
            static_artifacts=artifacts_spec,
            write_to_online_store=write_time,
            description=self.opt_str(loc, m, "description"),
            request_source=request_name,
            where=_where(self.source, loc.line).rstrip(": "),
            function=function,
            artifacts_function=artifacts,
        )

    def import_callable(self, loc: _Loc, spec: str, what: str) -> Callable[..., Any]:
        """``module:function``, imported from the registry's directory or the Python path."""
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            self.fail(loc, f"{what} '{spec}' is not of the form 'module:function'")
        if self.base_dir not in sys.path:
            sys.path.insert(0, self.base_dir)
        try:
            module = sys.modules.get(module_name)
            if module is None:
                module = importlib.import_module(module_name)
            elif self.reload_transforms:
                module = importlib.reload(module)
        except ImportError as e:
            self.fail(loc, f"{what} '{spec}': cannot import module '{module_name}': {e}")
        except Exception as e:  # the module's own code failed while it was imported
            self.fail(
                loc, f"{what} '{spec}': importing '{module_name}' raised {type(e).__name__}: {e}"
            )
        fn = getattr(module, attr, None)
        if fn is None:
            public = [n for n in dir(module) if not n.startswith("_")]
            self.fail(
                loc, f"{what} '{spec}': module '{module_name}' has no '{attr}'{_hint(attr, public)}"
            )
        if not callable(fn):
            self.fail(loc, f"{what} '{spec}': '{attr}' is {_kind(fn)}, not a function")
        return fn  # type: ignore[no-any-return]

    def entity(self, loc: _Loc, raw: object, seen: dict[str, str]) -> Entity:
        m = self.mapping(loc, raw, ("name", "join_keys"), ("description",))
        name_loc = self.child(loc, m, "name")
        name = self.name(name_loc, m["name"], "entity")
        self.unique(seen, name, name_loc, "entity name")
        keys_loc = self.child(loc, m, "join_keys")
        keys: list[JoinKey] = []
        key_seen: dict[str, str] = {}
        for i, raw_key in enumerate(self.sequence(keys_loc, m["join_keys"])):
            kloc = self.child(keys_loc, m["join_keys"], i)
            km = self.mapping(kloc, raw_key, ("name", "dtype"), ())
            kname_loc = self.child(kloc, km, "name")
            kname = self.name(kname_loc, km["name"], "join key")
            if kname == EVENT_TIMESTAMP:
                self.fail(kname_loc, f"'{EVENT_TIMESTAMP}' is reserved for the event time column")
            self.unique(key_seen, kname, kname_loc, "join key name")
            dtype = self.choice(self.child(kloc, km, "dtype"), km["dtype"], JOIN_KEY_DTYPES, "type")
            keys.append(JoinKey(kname, dtype))
        return Entity(name, tuple(keys), self.opt_str(loc, m, "description"))

    def view(
        self, loc: _Loc, raw: object, entities: Mapping[str, Entity], seen: dict[str, str]
    ) -> FeatureView:
        m = self.mapping(
            loc,
            raw,
            ("name", "entities", "features"),
            ("ttl", "batch_source", "stream_source", "push_source", "online", "description"),
        )
        name_loc = self.child(loc, m, "name")
        name = self.name(name_loc, m["name"], "feature view")
        self.unique(seen, name, name_loc, "feature view name")

        ents_loc = self.child(loc, m, "entities")
        entity_names: list[str] = []
        join_keys: list[JoinKey] = []
        key_owner: dict[str, str] = {}
        for i, raw_ent in enumerate(self.sequence(ents_loc, m["entities"])):
            eloc = self.child(ents_loc, m["entities"], i)
            ename = self.string(eloc, raw_ent)
            if ename not in entities:
                self.fail(eloc, f"unknown entity '{ename}'{_hint(ename, entities)}")
            if ename in entity_names:
                self.fail(eloc, f"entity '{ename}' is listed twice")
            entity_names.append(ename)
            for key in entities[ename].join_keys:
                if key.name in key_owner:
                    self.fail(
                        eloc,
                        f"join key '{key.name}' of entity '{ename}' is also a join key of "
                        f"entity '{key_owner[key.name]}' (a view's join key names must be unique)",
                    )
                key_owner[key.name] = ename
                join_keys.append(key)

        features = self.feature_list(loc, m, key_owner)

        ttl_loc = self.child(loc, m, "ttl")
        try:
            ttl = parse_ttl(m.get("ttl"))
        except ValueError as e:
            self.fail(ttl_loc, str(e))

        batch = None
        if m.get("batch_source") is not None:
            batch = self.batch_source(self.child(loc, m, "batch_source"), m["batch_source"])
        stream = None
        if m.get("stream_source") is not None:
            stream = self.stream_source(self.child(loc, m, "stream_source"), m["stream_source"])
        online = True
        if m.get("online") is not None:
            online = self.boolean(self.child(loc, m, "online"), m["online"])
        push_source = None
        if m.get("push_source") is not None:
            push_source = self.name(
                self.child(loc, m, "push_source"), m["push_source"], "push source"
            )

        return FeatureView(
            name=name,
            entities=tuple(entity_names),
            join_keys=tuple(join_keys),
            features=tuple(features),
            ttl_seconds=ttl,
            batch_source=batch,
            stream_source=stream,
            online=online,
            description=self.opt_str(loc, m, "description"),
            push_source=push_source,
        )

    def features(self, loc: _Loc, raw: object) -> list[Feature]:
        m = self.mapping(loc, raw, ("name", "dtype"), ("dim", "description", "vector_index"))
        name_loc = self.child(loc, m, "name")
        pattern = self.string(name_loc, m["name"])
        try:
            names = expand_braces(pattern)
        except ValueError as e:
            self.fail(name_loc, str(e))
        for n in names:
            if not _NAME_RE.fullmatch(n):
                self.fail(
                    name_loc, f"invalid feature name '{n}' (must match [A-Za-z_][A-Za-z0-9_]*)"
                )
        dtype = self.choice(self.child(loc, m, "dtype"), m["dtype"], FEATURE_DTYPES, "type")
        dim_loc = self.child(loc, m, "dim")
        dim: int | None = None
        if dtype == "float32_array":
            if m.get("dim") is None:
                self.fail(loc, "missing required key 'dim' (the array length) for float32_array")
            raw_dim = m["dim"]
            if isinstance(raw_dim, bool) or not isinstance(raw_dim, int):
                self.fail(dim_loc, f"expected an int, got {_kind(raw_dim)} {raw_dim!r}")
            if not 1 <= raw_dim <= MAX_DIM:
                self.fail(dim_loc, f"must be between 1 and {MAX_DIM}, got {raw_dim}")
            dim = raw_dim
        elif "dim" in m:
            self.fail(dim_loc, f"'dim' is only allowed for float32_array, not {dtype}")
        description = self.opt_str(loc, m, "description")
        index = None
        if m.get("vector_index") is not None:
            index_loc = self.child(loc, m, "vector_index")
            if dtype != "float32_array":
                self.fail(index_loc, f"'vector_index' needs a float32_array feature, not {dtype}")
            index = self.vector_index(index_loc, m["vector_index"])
        return [Feature(n, dtype, dim, description, index) for n in names]

    def vector_index(self, loc: _Loc, raw: object) -> VectorIndex:
        if raw is True:
            return VectorIndex()
        m = self.mapping(loc, raw, (), ("metric", "kind", *VECTOR_INDEX_INTS))
        d = VectorIndex()
        metric = d.metric
        if m.get("metric") is not None:
            metric = self.choice(
                self.child(loc, m, "metric"), m["metric"], VECTOR_METRICS, "metric"
            )
        kind = d.kind
        if m.get("kind") is not None:
            kind = self.choice(self.child(loc, m, "kind"), m["kind"], VECTOR_INDEX_KINDS, "kind")
        ints: dict[str, int] = {}
        for key, (lo, hi) in VECTOR_INDEX_INTS.items():
            if m.get(key) is None:
                continue
            kloc = self.child(loc, m, key)
            if kind == "exact" and key != "max_k":
                self.fail(kloc, f"'{key}' is a parameter of kind hnsw; kind exact has none")
            value = m[key]
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(kloc, f"expected an int, got {_kind(value)} {value!r}")
            if not lo <= value <= hi:
                self.fail(kloc, f"must be between {lo} and {hi}, got {value}")
            ints[key] = value
        return VectorIndex(
            metric=metric,
            kind=kind,
            m=ints.get("m", d.m),
            ef_construction=ints.get("ef_construction", d.ef_construction),
            ef_search=ints.get("ef_search", d.ef_search),
            max_k=ints.get("max_k", d.max_k),
        )

    def batch_source(self, loc: _Loc, raw: object) -> BatchSource:
        m = self.mapping(loc, raw, ("type",), ("path", "timestamp_field", "table", "catalog"))
        kind = self.choice(self.child(loc, m, "type"), m["type"], BATCH_SOURCE_TYPES, "source type")
        ts_field = EVENT_TIMESTAMP
        if m.get("timestamp_field") is not None:
            ts_field = self.string(self.child(loc, m, "timestamp_field"), m["timestamp_field"])
        table, catalog = "", {}
        if kind == "iceberg" and m.get("table") is not None:
            table = self.string(self.child(loc, m, "table"), m["table"])
            if m.get("path") is not None:
                self.fail(loc, "give either 'table' (with 'catalog') or 'path', not both")
            catalog = self.iceberg_catalog(loc, m)
            return BatchSource(kind, "", ts_field, table, MappingProxyType(catalog))
        for key in ("table", "catalog"):
            if key in m:
                what = "'table' and 'catalog'" if kind == "iceberg" else f"'{key}'"
                need = " need each other" if kind == "iceberg" else " is for iceberg sources only"
                self.fail(self.child(loc, m, key), f"{what}{need}")
        if "path" not in m:
            hint = " (or 'table' and 'catalog')" if kind == "iceberg" else ""
            self.fail(loc, f"missing required key 'path'{hint}")
        path = os.path.expanduser(self.string(self.child(loc, m, "path"), m["path"]))
        if "://" not in path:  # object-store URLs (s3://, gs://) are passed through as written
            path = os.path.normpath(os.path.join(self.base_dir, path))
        return BatchSource(kind, path, ts_field)

    def iceberg_catalog(self, loc: _Loc, m: Mapping[str, Any]) -> dict[str, str]:
        cloc = self.child(loc, m, "catalog")
        raw = m.get("catalog")
        if raw is None:
            self.fail(loc, "an iceberg 'table' needs its 'catalog' (e.g. {type: sql, uri: ...})")
        if not isinstance(raw, Mapping):
            self.fail(cloc, f"expected a mapping, got {_kind(raw)}")
        out: dict[str, str] = {}
        for key, value in raw.items():
            if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
                self.fail(cloc, f"catalog properties are strings, got {key!r}: {_kind(value)}")
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        if "type" not in out and "uri" not in out:
            self.fail(cloc, "missing 'type' (sql, rest, ...) or 'uri'")
        # a local SQLite catalog and warehouse are named relative to the registry file
        uri = out.get("uri", "")
        if uri.startswith("sqlite:///") and not uri[len("sqlite:///") :].startswith("/"):
            db = uri[len("sqlite:///") :]
            if db and db != ":memory:":
                out["uri"] = "sqlite:///" + os.path.normpath(os.path.join(self.base_dir, db))
        wh = out.get("warehouse", "")
        if wh and "://" not in wh:
            out["warehouse"] = "file://" + os.path.normpath(
                os.path.join(self.base_dir, os.path.expanduser(wh))
            )
        return out

    def stream_source(self, loc: _Loc, raw: object) -> StreamSource:
        m = self.mapping(
            loc,
            raw,
            ("type", "topic", "bootstrap_servers"),
            ("group_id", "format", "options"),
        )
        kind = self.choice(
            self.child(loc, m, "type"), m["type"], STREAM_SOURCE_TYPES, "source type"
        )
        topic_loc = self.child(loc, m, "topic")
        topic = self.string(topic_loc, m["topic"])
        if not _TOPIC_RE.fullmatch(topic):
            self.fail(topic_loc, f"invalid Kafka topic '{topic}' (allowed: A-Z a-z 0-9 . _ -)")
        servers = self.string(self.child(loc, m, "bootstrap_servers"), m["bootstrap_servers"])
        group_id = "feature-serving"
        if m.get("group_id") is not None:
            group_id = self.string(self.child(loc, m, "group_id"), m["group_id"])
        fmt = "json"
        if m.get("format") is not None:
            fmt = self.choice(self.child(loc, m, "format"), m["format"], STREAM_FORMATS, "format")
        options: dict[str, str] = {}
        raw_opts = m.get("options")
        if raw_opts is not None:
            oloc = self.child(loc, m, "options")
            if not isinstance(raw_opts, Mapping):
                self.fail(oloc, f"expected a mapping, got {_kind(raw_opts)}")
            for key, value in raw_opts.items():
                if not isinstance(key, str):
                    self.fail(oloc, f"keys must be strings, got {_kind(key)} {key!r}")
                vloc = self.child(oloc, raw_opts, key)
                # librdkafka takes every setting as a string; YAML turns `false` / `5000` into
                # bool / int, which are accepted and spelled the way librdkafka expects.
                if isinstance(value, bool):
                    options[key] = "true" if value else "false"
                elif isinstance(value, int | float | str):
                    options[key] = str(value)
                else:
                    self.fail(vloc, f"expected a string or number, got {_kind(value)}")
        return StreamSource(kind, topic, servers, group_id, fmt, MappingProxyType(options))

    def service(
        self,
        loc: _Loc,
        raw: object,
        views: Mapping[str, FeatureView | OnDemandFeatureView],
        seen: dict[str, str],
    ) -> FeatureService:
        m = self.mapping(loc, raw, ("name", "features"), ("description", "logging"))
        name_loc = self.child(loc, m, "name")
        name = self.name(name_loc, m["name"], "feature service")
        self.unique(seen, name, name_loc, "feature service name")
        refs = self.ref_list(loc, m, "features", views, "feature reference")
        logging_cfg = None
        if m.get("logging") is not None:
            logging_cfg = self.service_logging(self.child(loc, m, "logging"), m["logging"])
        return FeatureService(name, tuple(refs), self.opt_str(loc, m, "description"), logging_cfg)

    def service_logging(self, loc: _Loc, raw: object) -> ServiceLogging:
        keys = ("flush_interval_seconds", "flush_rows", "buffer_rows")
        m = self.mapping(loc, raw, ("sample_rate", "destination"), keys)
        rloc = self.child(loc, m, "sample_rate")
        rate = m["sample_rate"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            self.fail(rloc, f"sample_rate must be a number from 0.0 to 1.0, got {rate!r}")
        dloc = self.child(loc, m, "destination")
        raw_dest = m["destination"]
        items = raw_dest if isinstance(raw_dest, list) else [raw_dest]
        dests: list[LogDestination] = []
        for i, d in enumerate(self.sequence(dloc, items)):
            iloc = self.child(dloc, raw_dest, i) if isinstance(raw_dest, list) else dloc
            dests.append(self.log_destination(iloc, d))
        offline = [d for d in dests if d.type != "kafka"]
        if len(offline) > 1 or len(dests) - len(offline) > 1:
            self.fail(dloc, "at most one table destination (delta or parquet) and one kafka topic")
        out = ServiceLogging(float(rate), tuple(dests))
        numbers: dict[str, Any] = {}
        for key in keys:
            if m.get(key) is None:
                continue
            v = m[key]
            integral = key != "flush_interval_seconds"
            ok = isinstance(v, int) if integral else isinstance(v, int | float)
            if isinstance(v, bool) or not ok or v <= 0:
                kind = "a positive integer" if integral else "a positive number of seconds"
                self.fail(self.child(loc, m, key), f"{key} must be {kind}, got {v!r}")
            numbers[key] = v
        return dataclasses.replace(out, **numbers)

    def log_destination(self, loc: _Loc, raw: object) -> LogDestination:
        m = self.mapping(loc, raw, ("type",), ("path", "topic", "bootstrap_servers"))
        kind = self.choice(
            self.child(loc, m, "type"), m["type"], LOG_DESTINATION_TYPES, "log destination type"
        )
        need = ("topic", "bootstrap_servers") if kind == "kafka" else ("path",)
        for key in m:
            if key != "type" and key not in need:
                self.fail(self.child(loc, m, key), f"'{key}' is not an option of a {kind} log")
        for key in need:
            if key not in m:
                self.fail(loc, f"missing required key '{key}' (a {kind} log destination)")
        if kind == "kafka":
            topic = self.string(self.child(loc, m, "topic"), m["topic"])
            if not _TOPIC_RE.fullmatch(topic):
                self.fail(self.child(loc, m, "topic"), f"invalid Kafka topic name '{topic}'")
            servers = self.string(self.child(loc, m, "bootstrap_servers"), m["bootstrap_servers"])
            return LogDestination(kind, topic=topic, bootstrap_servers=servers)
        path = os.path.expanduser(self.string(self.child(loc, m, "path"), m["path"]))
        if "://" not in path:
            path = os.path.normpath(os.path.join(self.base_dir, path))
        return LogDestination(kind, path=path)

    def ref_list(
        self,
        loc: _Loc,
        m: Mapping[str, Any],
        key: str,
        views: Mapping[str, FeatureView | OnDemandFeatureView],
        what: str,
    ) -> list[FeatureRef]:
        """``m[key]``: a list of ``view:feature`` / ``view:*`` / brace references, expanded,
        each feature once."""
        list_loc = self.child(loc, m, key)
        refs: list[FeatureRef] = []
        seen: dict[str, str] = {}
        for i, raw_ref in enumerate(self.sequence(list_loc, m[key])):
            rloc = self.child(list_loc, m[key], i)
            for ref in self.refs(rloc, raw_ref, views):
                self.unique(seen, str(ref), rloc, what)
                refs.append(ref)
        return refs

    def feature_list(
        self, loc: _Loc, m: Mapping[str, Any], key_owner: Mapping[str, str]
    ) -> list[Feature]:
        """``m["features"]``, brace ranges expanded; a name may not be the event time column,
        repeat, or be a join key (``key_owner``: join key -> its entity)."""
        feats_loc = self.child(loc, m, "features")
        features: list[Feature] = []
        seen: dict[str, str] = {}
        for i, raw_feat in enumerate(self.sequence(feats_loc, m["features"])):
            floc = self.child(feats_loc, m["features"], i)
            for feature in self.features(floc, raw_feat):
                name_at = self.child(floc, raw_feat, "name")
                if feature.name in key_owner:
                    self.fail(
                        name_at,
                        f"feature name '{feature.name}' collides with the join key of entity "
                        f"'{key_owner[feature.name]}'",
                    )
                if feature.name == EVENT_TIMESTAMP:
                    self.fail(name_at, f"'{EVENT_TIMESTAMP}' is reserved for the event time column")
                self.unique(seen, feature.name, name_at, "feature name")
                features.append(feature)
        return features

    def refs(
        self, loc: _Loc, raw: object, views: Mapping[str, FeatureView | OnDemandFeatureView]
    ) -> list[FeatureRef]:
        text = self.string(loc, raw)
        view_name, sep, pattern = text.partition(":")
        if not sep or not view_name or not pattern:
            self.fail(
                loc, f"invalid feature reference '{text}' (expected 'view:feature' or 'view:*')"
            )
        view = views.get(view_name)
        if view is None:
            self.fail(loc, f"'{text}': unknown feature view '{view_name}'{_hint(view_name, views)}")
        if pattern == "*":
            return [FeatureRef(view_name, f.name) for f in view.features]
        try:
            names = expand_braces(pattern)
        except ValueError as e:
            self.fail(loc, str(e))
        known = [f.name for f in view.features]
        for n in names:
            if n not in known:
                self.fail(
                    loc,
                    f"'{text}': feature '{n}' not found in view '{view_name}'{_hint(n, known)}",
                )
        return [FeatureRef(view_name, n) for n in names]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
