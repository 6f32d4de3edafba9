"""The declarative registry: parsing the repo's features.yaml, exports, and every validation."""

from __future__ import annotations

import copy
import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from serving.errors import InvalidArgumentError, NotFoundError, RegistryError
from serving.registry import (
    FEATURE_DTYPES,
    JOIN_KEY_DTYPES,
    BatchSource,
    FeatureRef,
    JoinKey,
    Registry,
    expand_braces,
    parse_ttl,
)

REPO = Path(__file__).resolve().parent.parent
UTC_US = pa.timestamp("us", tz="UTC")


@pytest.fixture(scope="module")
def demo() -> Registry:
    return Registry.from_yaml(REPO / "features.yaml")


def minimal() -> dict[str, Any]:
    return {
        "project": "p",
        "entities": [
            {"name": "user", "join_keys": [{"name": "user_id", "dtype": "int64"}]},
            {"name": "item", "join_keys": [{"name": "item_id", "dtype": "string"}]},
        ],
        "feature_views": [
            {
                "name": "v",
                "entities": ["user"],
                "features": [
                    {"name": "a", "dtype": "float32"},
                    {"name": "b", "dtype": "int64"},
                ],
            }
        ],
        "feature_services": [{"name": "s", "features": ["v:a"]}],
    }


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(RegistryError) as info:
        Registry.from_dict(data)
    return info.value.message


# ------------------------------------------------------------------------------------------
# the demo registry


def test_demo_parses(demo: Registry) -> None:
    assert demo.project == "demo"
    assert demo.source_path == str(REPO / "features.yaml")
    assert list(demo.entities) == ["user", "item"]
    assert demo.entities["item"].join_keys == (JoinKey("item_id", "string"),)
    # the write-time on-demand view is stored, so it is a feature view too
    assert list(demo.feature_views) == [
        "user_profile", "user_account", "item_stats", "user_item", "item_ctr_scaled"
    ]  # fmt: skip
    assert list(demo.on_demand_views) == ["ranking_context", "item_ctr_scaled"]
    assert demo.view("item_ctr_scaled").join_keys == demo.view("item_stats").join_keys
    assert demo.view("item_ctr_scaled").ttl_seconds == demo.view("item_stats").ttl_seconds

    profile = demo.view("user_profile")
    assert [f.name for f in profile.features] == [f"f{i:03d}" for i in range(200)]
    assert {f.dtype for f in profile.features} == {"float32"}
    assert profile.ttl_seconds == 0
    assert profile.online
    assert profile.join_keys == (JoinKey("user_id", "int64"),)
    assert profile.batch_source == BatchSource(
        "parquet", str(REPO / ".data/sample/user_profile.parquet"), "event_timestamp"
    )
    stream = profile.stream_source
    assert stream is not None
    assert (stream.type, stream.topic, stream.format) == ("kafka", "user_profile", "json")
    assert stream.bootstrap_servers == "127.0.0.1:9092"
    assert dict(stream.options) == {}

    account = demo.view("user_account")
    assert {f.dtype for f in account.features} == set(FEATURE_DTYPES) - {"float32"}
    assert account.feature("embedding").dim == 8
    assert account.feature("age").dim is None
    assert account.ttl_seconds == 3650 * 86400
    assert demo.view("item_stats").ttl_seconds == 7 * 86400
    assert demo.view("user_item").entities == ("user", "item")
    assert demo.view("user_item").join_keys == (
        JoinKey("user_id", "int64"),
        JoinKey("item_id", "string"),
    )


def test_demo_services(demo: Registry) -> None:
    ranking = [str(r) for r in demo.service("ranking_v1").features]
    assert ranking == [
        *(f"user_profile:f{i:03d}" for i in range(10)),
        "user_account:age",
        "user_account:embedding",
        "item_stats:ctr",
    ]
    everything = demo.service("user_profile_all").features
    assert len(everything) == 200
    assert everything[0] == FeatureRef("user_profile", "f000")
    assert str(everything[-1]) == "user_profile:f199"


def test_to_core_json_shape(demo: Registry) -> None:
    doc = json.loads(demo.to_core_json())
    assert set(doc) == {"project", "feature_views", "feature_services", "on_demand_feature_views"}
    # request-time on-demand views go to the core as such; write-time ones as stored views
    assert [o["name"] for o in doc["on_demand_feature_views"]] == ["ranking_context"]
    assert doc["on_demand_feature_views"][0]["request_fields"] == [
        {"name": "price", "dtype": "float64"}
    ]
    assert doc["project"] == "demo"
    assert [v["name"] for v in doc["feature_views"]] == list(demo.feature_views)
    for view in doc["feature_views"]:
        assert set(view) == {"name", "join_keys", "ttl_seconds", "features"}
        for key in view["join_keys"]:
            assert set(key) == {"name", "dtype"}
        for feature in view["features"]:
            # vector_index only where declared (features.yaml: user_account.embedding)
            assert set(feature) - {"vector_index"} == {"name", "dtype", "dim"}
    account = next(v for v in doc["feature_views"] if v["name"] == "user_account")
    emb = next(f for f in account["features"] if f["name"] == "embedding")
    assert emb["vector_index"] == {
        "metric": "cosine", "kind": "hnsw", "m": 16, "ef_construction": 128, "ef_search": 64,
        "max_k": 1000,
    }  # fmt: skip
    profile = doc["feature_views"][0]
    assert profile["join_keys"] == [{"name": "user_id", "dtype": "int64"}]
    assert profile["ttl_seconds"] == 0
    assert profile["features"][5] == {"name": "f005", "dtype": "float32", "dim": None}
    account = doc["feature_views"][1]
    assert account["ttl_seconds"] == 315360000
    assert {
        "name": "embedding",
        "dtype": "float32_array",
        "dim": 8,
        "vector_index": emb["vector_index"],
    } in account["features"]
    assert [k["name"] for k in doc["feature_views"][3]["join_keys"]] == ["user_id", "item_id"]
    ranking = doc["feature_services"][0]
    assert set(ranking) == {"name", "features"}
    assert ranking["name"] == "ranking_v1"
    assert ranking["features"][0] == {"view": "user_profile", "feature": "f000"}
    assert ranking["features"][-1] == {"view": "item_stats", "feature": "ctr"}


def test_to_core_json_keeps_offline_views() -> None:
    data = minimal()
    data["feature_views"][0]["online"] = False
    reg = Registry.from_dict(data)
    assert not reg.view("v").online
    assert [v["name"] for v in json.loads(reg.to_core_json())["feature_views"]] == ["v"]


def test_arrow_schema_every_type(demo: Registry) -> None:
    schema = demo.arrow_schema("user_account")
    assert schema == pa.schema(
        [
            ("user_id", pa.int64()),
            ("event_timestamp", UTC_US),
            ("country", pa.string()),
            ("age", pa.int32()),
            ("lifetime_orders", pa.int64()),
            ("is_premium", pa.bool_()),
            ("balance", pa.float64()),
            ("signup_ts", UTC_US),
            ("avatar_sha", pa.binary()),
            ("embedding", pa.list_(pa.float32(), 8)),
        ]
    )
    assert all(f.nullable for f in schema)
    assert isinstance(schema.field("embedding").type, pa.FixedSizeListType)


def test_arrow_schema_join_keys_first(demo: Registry) -> None:
    schema = demo.arrow_schema("user_item")
    assert schema.names == ["user_id", "item_id", "event_timestamp", "affinity", "last_click_ts"]
    assert schema.field("item_id").type == pa.string()
    profile = demo.arrow_schema("user_profile")
    assert len(profile) == 202
    assert profile.field("f199").type == pa.float32()


@pytest.mark.parametrize(
    ("dtype", "arrow"),
    [("int32", pa.int32()), ("int64", pa.int64()), ("string", pa.string()), ("bytes", pa.binary())],
)
def test_arrow_schema_join_key_types(dtype: str, arrow: pa.DataType) -> None:
    data = minimal()
    data["entities"][0]["join_keys"][0]["dtype"] = dtype
    assert Registry.from_dict(data).arrow_schema("v").field("user_id").type == arrow


def test_constants() -> None:
    assert FEATURE_DTYPES == (
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
    assert JOIN_KEY_DTYPES == ("int32", "int64", "string", "bytes")


# ------------------------------------------------------------------------------------------
# lookups


def test_view_and_service_not_found(demo: Registry) -> None:
    with pytest.raises(NotFoundError, match=r"feature view 'user_profil' .*'user_profile'"):
        demo.view("user_profil")
    with pytest.raises(NotFoundError, match=r"feature service 'ranking_v3'.*'ranking_v2'"):
        demo.service("ranking_v3")
    with pytest.raises(NotFoundError, match=r"feature view 'zzz' not found"):
        demo.arrow_schema("zzz")


def test_feature_lookup(demo: Registry) -> None:
    view = demo.view("user_account")
    assert view.feature("balance").dtype == "float64"
    with pytest.raises(NotFoundError) as info:
        view.feature("balanse")
    assert info.value.message == (
        "feature 'balanse' not found in view 'user_account' (did you mean 'balance'?)"
    )


def test_resolve_refs(demo: Registry) -> None:
    refs = demo.resolve_refs(["user_profile:f001", "item_stats:*", "user_account:age"])
    assert [str(r) for r in refs] == [
        "user_profile:f001",
        "item_stats:ctr",
        "item_stats:impressions",
        "item_stats:category",
        "user_account:age",
    ]
    assert demo.resolve_refs([]) == ()


@pytest.mark.parametrize(
    ("ref", "error", "fragment"),
    [
        (
            "user_profile.f001",
            InvalidArgumentError,
            "invalid feature reference 'user_profile.f001'",
        ),
        (":f001", InvalidArgumentError, "invalid feature reference ':f001'"),
        ("user_profile:", InvalidArgumentError, "invalid feature reference 'user_profile:'"),
        (
            "user_profil:f001",
            NotFoundError,
            "'user_profil:f001': feature view 'user_profil' not found "
            "(did you mean 'user_profile'?)",
        ),
        (
            "user_profile:f1000",
            NotFoundError,
            "'user_profile:f1000': feature 'f1000' not found in view 'user_profile'",
        ),
    ],
)
def test_resolve_refs_errors(
    demo: Registry, ref: str, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as info:
        demo.resolve_refs(["user_profile:f000", ref])
    assert fragment in str(info.value)
    # NotFoundError must not be mistaken for a malformed request, and vice versa.
    assert type(info.value) is error


def test_resolve_refs_rejects_bare_string(demo: Registry) -> None:
    with pytest.raises(InvalidArgumentError, match="expected a list"):
        demo.resolve_refs("user_profile:f000")


# ------------------------------------------------------------------------------------------
# validation: messages name the entry by path


def test_unknown_dtype_with_path_and_suggestion() -> None:
    data = minimal()
    data["feature_views"][0]["features"][1]["dtype"] = "flaot32"
    assert error_of(data) == (
        "feature_views[0].features[1].dtype: unknown type 'flaot32' (expected one of "
        "bool, int32, int64, float32, float64, string, bytes, timestamp, float32_array; "
        "did you mean 'float32'?)"
    )


def test_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "features.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            project: p
            entities:
              - name: user
                join_keys: [{name: user_id, dtype: int64}]
            feature_views:
              - name: v
                entities: [user]
                features:
                  - {name: a, dtype: float32}
                  - {name: b, dtype: flaot32}
            """
        )
    )
    with pytest.raises(RegistryError) as info:
        Registry.from_yaml(path)
    assert info.value.message.startswith(
        f"{path}:10: feature_views[0].features[1].dtype: unknown type 'flaot32'"
    )


def test_text_errors_carry_line() -> None:
    text = "project: p\nentities: []\nfeature_views: []\n"
    with pytest.raises(RegistryError, match=r"^line 2: entities: must not be empty$"):
        Registry.from_yaml_text(text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"nope\.yaml: cannot read registry file"):
        Registry.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("project: [", "line 1: invalid YAML"),
        ("project: p\nproject: q\n", "line 2: invalid YAML: duplicate key 'project'"),
        ("", "the registry is empty"),
        ("- a\n", "expected a mapping, got list"),
    ],
)
def test_yaml_level_errors(text: str, fragment: str) -> None:
    with pytest.raises(RegistryError) as info:
        Registry.from_yaml_text(text)
    assert fragment in info.value.message


def test_unknown_key_suggests() -> None:
    data = minimal()
    data["feature_views"][0]["features"][0]["dtpye"] = "float32"
    assert error_of(data) == (
        "feature_views[0].features[0].dtpye: unknown key 'dtpye' "
        "(allowed: name, dtype, dim, description, vector_index; did you mean 'dtype'?)"
    )


def test_unknown_key_in_every_section() -> None:
    cases: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda d: d.update(projct="x"), "projct"),
        (lambda d: d["entities"][0].update(joinkeys=[]), "entities[0].joinkeys"),
        (lambda d: d["entities"][0]["join_keys"][0].update(type="x"), "join_keys[0].type"),
        (lambda d: d["feature_views"][0].update(tll=3), "feature_views[0].tll"),
        (lambda d: d["feature_services"][0].update(feature=[]), "feature_services[0].feature"),
        (
            lambda d: d["feature_views"][0].update(
                batch_source={"type": "parquet", "path": "x", "timestamp_column": "t"}
            ),
            "feature_views[0].batch_source.timestamp_column",
        ),
    ]
    for mutate, path in cases:
        data = minimal()
        mutate(data)
        message = error_of(data)
        assert path in message, message
        assert "unknown key" in message


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("project", "missing required key 'project'"),
        ("entities", "missing required key 'entities'"),
        ("feature_views", "missing required key 'feature_views'"),
    ],
)
def test_missing_top_level_keys(key: str, fragment: str) -> None:
    data = minimal()
    del data[key]
    assert fragment in error_of(data)


def test_feature_services_optional() -> None:
    data = minimal()
    del data["feature_services"]
    assert dict(Registry.from_dict(data).feature_services) == {}


def test_missing_nested_key_names_parent() -> None:
    data = minimal()
    del data["feature_views"][0]["features"][1]["dtype"]
    assert error_of(data) == "feature_views[0].features[1]: missing required key 'dtype'"


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("project",), 3, "project: expected a string, got int 3"),
        (("project",), "my-project", "invalid project name 'my-project'"),
        (("entities",), {}, "entities: expected a list, got mapping"),
        (("entities",), [], "entities: must not be empty"),
        (("feature_views",), [], "feature_views: must not be empty"),
        (("feature_views", 0, "features"), [], "feature_views[0].features: must not be empty"),
        (("feature_views", 0, "entities"), [], "feature_views[0].entities: must not be empty"),
        (("entities", 0, "join_keys"), [], "entities[0].join_keys: must not be empty"),
        (("feature_services", 0, "features"), [], "feature_services[0].features: must not be"),
        (("feature_views", 0, "features", 0), "a", "features[0]: expected a mapping, got string"),
        (("feature_views", 0, "features", 0, "name"), "1a", "invalid feature name '1a'"),
        (("feature_views", 0, "features", 0, "name"), "a-b", "invalid feature name 'a-b'"),
        (("feature_views", 0, "features", 0, "name"), True, "quote it"),
        (("feature_views", 0, "name"), "", "feature_views[0].name: must not be empty"),
        (("feature_views", 0, "online"), "yes", "online: expected true or false, got string"),
        (("feature_views", 0, "description"), 5, "description: expected a string, got int"),
        (
            ("entities", 0, "join_keys", 0, "dtype"),
            "float32",
            "entities[0].join_keys[0].dtype: unknown type 'float32' "
            "(expected one of int32, int64, string, bytes)",
        ),
        (
            ("entities", 0, "join_keys", 0, "name"),
            "event_timestamp",
            "'event_timestamp' is reserved",
        ),
        (("feature_services", 0, "features", 0), 7, "features[0]: expected a string, got int"),
    ],
)
def test_type_errors(path: tuple[str | int, ...], value: object, fragment: str) -> None:
    data = minimal()
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    message = error_of(data)
    assert fragment in message, message


def test_duplicate_names() -> None:
    data = minimal()
    data["entities"].append(copy.deepcopy(data["entities"][0]))
    assert error_of(data) == (
        "entities[2].name: duplicate entity name 'user' (first defined at entities[0].name)"
    )

    data = minimal()
    data["feature_views"].append(copy.deepcopy(data["feature_views"][0]))
    assert "feature_views[1].name: duplicate feature view name 'v'" in error_of(data)

    data = minimal()
    data["feature_views"][0]["features"][1]["name"] = "a"
    assert error_of(data) == (
        "feature_views[0].features[1].name: duplicate feature name 'a' "
        "(first defined at feature_views[0].features[0].name)"
    )

    data = minimal()
    data["feature_services"].append({"name": "s", "features": ["v:b"]})
    assert "feature_services[1].name: duplicate feature service name 's'" in error_of(data)

    data = minimal()
    data["entities"][0]["join_keys"].append({"name": "user_id", "dtype": "string"})
    assert "entities[0].join_keys[1].name: duplicate join key name 'user_id'" in error_of(data)

    data = minimal()
    data["feature_services"][0]["features"] = ["v:*", "v:b"]
    assert "feature_services[0].features[1]: duplicate feature reference 'v:b'" in error_of(data)


def test_feature_name_collisions() -> None:
    data = minimal()
    data["feature_views"][0]["features"][1]["name"] = "user_id"
    assert error_of(data) == (
        "feature_views[0].features[1].name: feature name 'user_id' collides with the join key "
        "of entity 'user'"
    )
    data = minimal()
    data["feature_views"][0]["features"][0]["name"] = "event_timestamp"
    assert "features[0].name: 'event_timestamp' is reserved" in error_of(data)


def test_view_entity_references() -> None:
    data = minimal()
    data["feature_views"][0]["entities"] = ["user", "iten"]
    assert error_of(data) == (
        "feature_views[0].entities[1]: unknown entity 'iten' (did you mean 'item'?)"
    )
    data = minimal()
    data["feature_views"][0]["entities"] = ["user", "user"]
    assert "feature_views[0].entities[1]: entity 'user' is listed twice" in error_of(data)

    data = minimal()
    data["entities"].append(
        {"name": "person", "join_keys": [{"name": "user_id", "dtype": "int64"}]}
    )
    data["feature_views"][0]["entities"] = ["user", "person"]
    assert "join key 'user_id' of entity 'person' is also a join key of entity 'user'" in (
        error_of(data)
    )


def test_composite_join_keys_in_entity_order() -> None:
    data = minimal()
    data["feature_views"][0]["entities"] = ["item", "user"]
    view = Registry.from_dict(data).view("v")
    assert [k.name for k in view.join_keys] == ["item_id", "user_id"]
    assert Registry.from_dict(data).arrow_schema("v").names[:3] == [
        "item_id",
        "user_id",
        "event_timestamp",
    ]


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("v.a", "feature_services[0].features[0]: invalid feature reference 'v.a'"),
        ("w:a", "feature_services[0].features[0]: 'w:a': unknown feature view 'w'"),
        ("v:c", "'v:c': feature 'c' not found in view 'v'"),
        ("v:x{0..3}", "'v:x{0..3}': feature 'x0' not found in view 'v'"),
    ],
)
def test_service_references(ref: str, fragment: str) -> None:
    data = minimal()
    data["feature_services"][0]["features"] = [ref]
    message = error_of(data)
    assert fragment in message, message


def test_service_reference_suggests() -> None:
    data = minimal()
    data["feature_views"][0]["features"][0]["name"] = "balance"
    data["feature_services"][0]["features"] = ["v:balanse"]
    assert "(did you mean 'balance'?)" in error_of(data)


# ------------------------------------------------------------------------------------------
# features, dims, sources, ttl


def test_brace_expansion() -> None:
    assert expand_braces("f{000..003}") == ["f000", "f001", "f002", "f003"]
    assert expand_braces("f{8..11}") == ["f8", "f9", "f10", "f11"]
    assert expand_braces("f{08..11}") == ["f08", "f09", "f10", "f11"]
    assert expand_braces("x{0..1}_{0..1}") == ["x0_0", "x0_1", "x1_0", "x1_1"]
    assert expand_braces("plain") == ["plain"]
    for bad in ("f{0..}", "f{a..b}", "f{3..1}", "f{0,1}", "f}", "f{0..1}{"):
        with pytest.raises(ValueError, match="brace range"):
            expand_braces(bad)
    with pytest.raises(ValueError, match="at most"):
        expand_braces("f{0..999999}")


def test_brace_expansion_in_registry() -> None:
    data = minimal()
    del data["feature_services"]
    data["feature_views"][0]["features"] = [
        {"name": "g{00..11}", "dtype": "int32", "description": "d"},
        {"name": "h", "dtype": "bool"},
    ]
    view = Registry.from_dict(data).view("v")
    assert [f.name for f in view.features][:3] == ["g00", "g01", "g02"]
    assert len(view.features) == 13
    assert view.feature("g11").description == "d"
    data["feature_views"][0]["features"][1]["name"] = "g05"
    assert "features[1].name: duplicate feature name 'g05'" in error_of(data)
    data["feature_views"][0]["features"][0]["name"] = "g{5..1}"
    assert "features[0].name: brace range start 5 is greater than end 1" in error_of(data)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({}, "features[0]: missing required key 'dim' (the array length) for float32_array"),
        ({"dim": 0}, "features[0].dim: must be between 1 and 65535, got 0"),
        ({"dim": 65536}, "must be between 1 and 65535"),
        ({"dim": "8"}, "features[0].dim: expected an int, got string '8'"),
        ({"dim": True}, "expected an int, got bool"),
    ],
)
def test_float32_array_dim(extra: dict[str, object], fragment: str) -> None:
    data = minimal()
    data["feature_views"][0]["features"][0] = {"name": "e", "dtype": "float32_array", **extra}
    message = error_of(data)
    assert fragment in message, message


def test_dim_only_for_arrays() -> None:
    data = minimal()
    data["feature_views"][0]["features"][0]["dim"] = 4
    assert error_of(data) == (
        "feature_views[0].features[0].dim: 'dim' is only allowed for float32_array, not float32"
    )
    data["feature_views"][0]["features"][0] = {"name": "e", "dtype": "float32_array", "dim": 4}
    del data["feature_services"]
    assert Registry.from_dict(data).view("v").feature("e").dim == 4


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 0),
        (0, 0),
        (3600, 3600),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("30d", 2592000),
        ("1w", 604800),
        ("1h30m", 5400),
        ("120", 120),
    ],
)
def test_ttl_parsing(value: object, seconds: int) -> None:
    assert parse_ttl(value) == seconds
    data = minimal()
    data["feature_views"][0]["ttl"] = value
    assert Registry.from_dict(data).view("v").ttl_seconds == seconds


def test_ttl_absent_is_zero() -> None:
    assert Registry.from_dict(minimal()).view("v").ttl_seconds == 0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("5x", "invalid duration '5x'"),
        ("h", "invalid duration 'h'"),
        ("1.5h", "invalid duration '1.5h'"),
        ("-5s", "invalid duration '-5s'"),
        (-5, "must not be negative"),
        (1.5, "got float 1.5"),
        (True, "got bool True"),
        (10**20, "too large"),
    ],
)
def test_ttl_errors(value: object, fragment: str) -> None:
    data = minimal()
    data["feature_views"][0]["ttl"] = value
    message = error_of(data)
    assert message.startswith("feature_views[0].ttl: "), message
    assert fragment in message


def test_batch_source_path_resolution(tmp_path: Path) -> None:
    data = minimal()
    data["feature_views"][0]["batch_source"] = {"type": "delta", "path": "data/../tables/v"}
    source = Registry.from_dict(data, base_dir=str(tmp_path)).view("v").batch_source
    assert source == BatchSource("delta", str(tmp_path / "tables" / "v"), "event_timestamp")

    data["feature_views"][0]["batch_source"] = {"type": "parquet", "path": "/abs/v.parquet"}
    source = Registry.from_dict(data, base_dir=str(tmp_path)).view("v").batch_source
    assert source is not None
    assert source.path == "/abs/v.parquet"

    data["feature_views"][0]["batch_source"] = {"type": "parquet", "path": "rel.parquet"}
    source = Registry.from_dict(data).view("v").batch_source
    assert source is not None
    assert source.path == os.path.join(os.getcwd(), "rel.parquet")


def test_yaml_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    data = minimal()
    data["feature_views"][0]["batch_source"] = {
        "type": "parquet",
        "path": "v.parquet",
        "timestamp_field": "ts",
    }
    (sub / "r.yaml").write_text(json.dumps(data))  # JSON is YAML
    reg = Registry.from_yaml(sub / "r.yaml")
    assert reg.source_path == str(sub / "r.yaml")
    assert reg.view("v").batch_source == BatchSource("parquet", str(sub / "v.parquet"), "ts")


def test_batch_source_errors() -> None:
    data = minimal()
    data["feature_views"][0]["batch_source"] = {"type": "csv", "path": "x"}
    assert "feature_views[0].batch_source.type: unknown source type 'csv'" in error_of(data)
    data["feature_views"][0]["batch_source"] = {"type": "parquet"}
    assert "feature_views[0].batch_source: missing required key 'path'" in error_of(data)


def test_push_source(tmp_path: Path) -> None:
    data = minimal()
    data["feature_views"][0]["push_source"] = "v_push"
    data["feature_views"].append({**data["feature_views"][0], "name": "w"})
    data["feature_views"].append(
        {"name": "x", "entities": ["item"], "features": [{"name": "a", "dtype": "float32"}]}
    )
    reg = Registry.from_dict(data)
    assert [v.name for v in reg.push_views("v_push")] == ["v", "w"]  # Feast pushes to both
    assert reg.view("x").push_source is None
    with pytest.raises(NotFoundError) as info:
        reg.push_views("v_psuh")
    assert info.value.message == (
        "push source 'v_psuh' not found (no feature view declares it as push_source) "
        "(did you mean 'v_push'?)"
    )
    # a bad name is reported with the file and line, as every registry error
    path = tmp_path / "features.yaml"
    path.write_text(
        "project: p\nentities:\n  - {name: user, join_keys: [{name: user_id, dtype: int64}]}\n"
        "feature_views:\n  - name: v\n    entities: [user]\n"
        "    features: [{name: a, dtype: float32}]\n    push_source: 'my push'\n"
    )
    with pytest.raises(RegistryError) as err:
        Registry.from_yaml(path)
    assert err.value.message == (
        f"{path}:8: feature_views[0].push_source: invalid push source name 'my push' "
        "(must match [A-Za-z_][A-Za-z0-9_]*)"
    )


def test_stream_source() -> None:
    data = minimal()
    data["feature_views"][0]["stream_source"] = {
        "type": "kafka",
        "topic": "v.updates",
        "bootstrap_servers": "h:1",
        "options": {"enable.auto.commit": False, "fetch.wait.max.ms": 5, "client.id": "x"},
    }
    stream = Registry.from_dict(data).view("v").stream_source
    assert stream is not None
    assert (stream.group_id, stream.format) == ("feature-serving", "json")
    assert dict(stream.options) == {
        "enable.auto.commit": "false",
        "fetch.wait.max.ms": "5",
        "client.id": "x",
    }


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"type": "kinesis"}, "stream_source.type: unknown source type 'kinesis'"),
        ({"format": "avro"}, "stream_source.format: unknown format 'avro'"),
        ({"format": "jsn"}, "did you mean 'json'?"),
        ({"topic": "a topic"}, "stream_source.topic: invalid Kafka topic 'a topic'"),
        ({"options": ["x"]}, "stream_source.options: expected a mapping, got list"),
        ({"options": {"a": [1]}}, "stream_source.options.a: expected a string or number"),
        ({"bootstrap_servers": None}, "bootstrap_servers: expected a string, got null"),
    ],
)
def test_stream_source_errors(change: dict[str, object], fragment: str) -> None:
    data = minimal()
    data["feature_views"][0]["stream_source"] = {
        "type": "kafka",
        "topic": "t",
        "bootstrap_servers": "h:1",
        **change,
    }
    message = error_of(data)
    assert fragment in message, message


def test_registry_is_immutable(demo: Registry) -> None:
    with pytest.raises(TypeError):
        demo.feature_views["x"] = demo.view("user_profile")  # type: ignore[index]
    with pytest.raises(AttributeError):
        demo.project = "other"  # type: ignore[misc]
