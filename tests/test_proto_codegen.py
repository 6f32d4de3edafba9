"""``python -m serving._codegen``: generated modules, rewritten imports, and wire compatibility.

The field numbers checked here are Feast's published ones (feast-dev/feast
``protos/feast/serving/ServingService.proto`` and ``protos/feast/types/Value.proto``): real Feast
clients only interoperate if they match exactly.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import serving._proto
from serving import _codegen

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PKG = "serving._proto"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proto_out")
    assert _codegen.main(["--out", str(out), "--force"]) == 0
    return out


@pytest.fixture(scope="module")
def gen(out_dir: Path) -> Iterator[SimpleNamespace]:
    """The modules generated into ``out_dir``, imported under their real names.

    ``serving._proto.__path__`` is pointed at ``out_dir`` for the duration, so the rewritten
    ``serving._proto.*`` imports resolve to the freshly generated files; the previous modules are
    restored afterwards.
    """
    saved = {name: mod for name, mod in sys.modules.items() if name.startswith(PKG + ".")}
    for name in saved:
        del sys.modules[name]
    old_path = list(serving._proto.__path__)
    serving._proto.__path__[:] = [str(out_dir)]
    try:
        mods = {
            key: importlib.import_module(f"{PKG}.{name}")
            for key, name in [
                ("serving", "feast.serving.ServingService_pb2"),
                ("serving_grpc", "feast.serving.ServingService_pb2_grpc"),
                ("value", "feast.types.Value_pb2"),
                ("v1", "feature_serving.v1.feature_service_pb2"),
                ("v1_grpc", "feature_serving.v1.feature_service_pb2_grpc"),
                ("row", "feature_serving.v1.feature_row_pb2"),
            ]
        }
        for mod in mods.values():
            assert Path(mod.__file__ or "").is_relative_to(out_dir), mod.__file__
        yield SimpleNamespace(**mods)
    finally:
        serving._proto.__path__[:] = old_path
        for name in [n for n in sys.modules if n.startswith(PKG + ".")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_layout_preserves_package_dirs(out_dir: Path) -> None:
    for rel in [
        "feast/serving/ServingService_pb2.py",
        "feast/serving/ServingService_pb2.pyi",
        "feast/serving/ServingService_pb2_grpc.py",
        "feast/types/Value_pb2.py",
        "feast/types/Value_pb2.pyi",
        "feature_serving/v1/feature_service_pb2.py",
        "feature_serving/v1/feature_service_pb2.pyi",
        "feature_serving/v1/feature_service_pb2_grpc.py",
        "feature_serving/v1/feature_row_pb2.py",
    ]:
        assert (out_dir / rel).is_file(), rel
    for pkg in ["feast", "feast/serving", "feast/types", "feature_serving", "feature_serving/v1"]:
        assert (out_dir / pkg / "__init__.py").is_file(), pkg


def test_imports_are_rewritten(out_dir: Path) -> None:
    generated = [*out_dir.rglob("*.py"), *out_dir.rglob("*.pyi")]
    assert generated
    for path in generated:
        for line in path.read_text().splitlines():
            stripped = line.lstrip()
            assert not stripped.startswith(("from feast", "from feature_serving")), (path, line)
            assert not stripped.startswith(("import feast", "import feature_serving")), (path, line)
    value_import = f"from {PKG}.feast.types import Value_pb2 as "
    for rel in ["feast/serving/ServingService_pb2.py", "feast/serving/ServingService_pb2.pyi"]:
        assert value_import in (out_dir / rel).read_text(), rel
    grpc_src = (out_dir / "feast/serving/ServingService_pb2_grpc.py").read_text()
    assert f"from {PKG}.feast.serving import ServingService_pb2 as " in grpc_src
    assert (
        "from google.protobuf import timestamp_pb2"
        in (out_dir / "feast/serving/ServingService_pb2.py").read_text()
    )


def test_rewrite_imports_unit() -> None:
    src = (
        "from feast.types import Value_pb2 as v\n"
        "    from feature_serving.v1 import feature_service_pb2\n"
        "from feasty import x\n"
        "from google.protobuf import descriptor\n"
    )
    assert _codegen.rewrite_imports(src, ["feast", "feature_serving"]) == (
        f"from {PKG}.feast.types import Value_pb2 as v\n"
        f"    from {PKG}.feature_serving.v1 import feature_service_pb2\n"
        "from feasty import x\n"
        "from google.protobuf import descriptor\n"
    )


# (message full name, field name, Feast field number)
FEAST_FIELDS = [
    ("feast.serving.GetOnlineFeaturesRequest", "feature_service", 1),
    ("feast.serving.GetOnlineFeaturesRequest", "features", 2),
    ("feast.serving.GetOnlineFeaturesRequest", "entities", 3),
    ("feast.serving.GetOnlineFeaturesRequest", "full_feature_names", 4),
    ("feast.serving.GetOnlineFeaturesRequest", "request_context", 5),
    ("feast.serving.FeatureList", "val", 1),
    ("feast.serving.GetOnlineFeaturesResponse", "metadata", 1),
    ("feast.serving.GetOnlineFeaturesResponse", "results", 2),
    ("feast.serving.GetOnlineFeaturesResponse.FeatureVector", "values", 1),
    ("feast.serving.GetOnlineFeaturesResponse.FeatureVector", "statuses", 2),
    ("feast.serving.GetOnlineFeaturesResponse.FeatureVector", "event_timestamps", 3),
    ("feast.serving.GetOnlineFeaturesResponseMetadata", "feature_names", 1),
    ("feast.serving.GetFeastServingInfoResponse", "version", 1),
    ("feast.types.RepeatedValue", "val", 1),
    ("feast.types.Value", "bytes_val", 1),
    ("feast.types.Value", "string_val", 2),
    ("feast.types.Value", "int32_val", 3),
    ("feast.types.Value", "int64_val", 4),
    ("feast.types.Value", "double_val", 5),
    ("feast.types.Value", "float_val", 6),
    ("feast.types.Value", "bool_val", 7),
    ("feast.types.Value", "unix_timestamp_val", 8),
    ("feast.types.Value", "bytes_list_val", 11),
    ("feast.types.Value", "float_list_val", 16),
    ("feast.types.Value", "unix_timestamp_list_val", 18),
    ("feast.types.Value", "null_val", 19),
    ("feast.types.Value", "map_val", 20),
    ("feast.types.Value", "time_uuid_list_val", 33),
]


@pytest.mark.parametrize(("message", "field", "number"), FEAST_FIELDS)
def test_feast_field_numbers(gen: SimpleNamespace, message: str, field: str, number: int) -> None:
    pool = gen.serving.DESCRIPTOR.pool
    assert pool.FindMessageTypeByName(message).fields_by_name[field].number == number


def test_feast_enums_and_service(gen: SimpleNamespace) -> None:
    s = gen.serving
    assert s.DESCRIPTOR.name == "feast/serving/ServingService.proto"
    assert gen.value.DESCRIPTOR.name == "feast/types/Value.proto"
    assert s.GetOnlineFeaturesRequest.DESCRIPTOR.fields_by_name["entities"].number == 3
    assert dict(s.FieldStatus.items()) == {
        "INVALID": 0,
        "PRESENT": 1,
        "NULL_VALUE": 2,
        "NOT_FOUND": 3,
        "OUTSIDE_MAX_AGE": 4,
    }
    assert gen.value.ValueType.FLOAT == 6
    assert gen.value.NULL == 0
    service = s.DESCRIPTOR.services_by_name["ServingService"]
    assert service.full_name == "feast.serving.ServingService"
    assert {m.name for m in service.methods} == {"GetFeastServingInfo", "GetOnlineFeatures"}
    assert hasattr(gen.serving_grpc, "ServingServiceStub")
    assert hasattr(gen.serving_grpc, "add_ServingServiceServicer_to_server")


def test_feast_request_round_trip(gen: SimpleNamespace) -> None:
    s, v = gen.serving, gen.value
    req = s.GetOnlineFeaturesRequest(
        features=s.FeatureList(val=["user_profile:f000", "user_profile:f001"]),
        entities={"user_id": v.RepeatedValue(val=[v.Value(int64_val=123), v.Value(int64_val=456)])},
    )
    parsed = s.GetOnlineFeaturesRequest.FromString(req.SerializeToString())
    assert parsed.WhichOneof("kind") == "features"
    assert list(parsed.features.val) == ["user_profile:f000", "user_profile:f001"]
    assert [x.int64_val for x in parsed.entities["user_id"].val] == [123, 456]
    # Wire layout spot check: field 3 (entities), length-delimited -> tag byte 0x1a.
    assert s.GetOnlineFeaturesRequest(
        entities={"k": v.RepeatedValue()}
    ).SerializeToString() == bytes([0x1A, 0x05, 0x0A, 0x01, ord("k"), 0x12, 0x00])


def test_v1_api(gen: SimpleNamespace) -> None:
    f = gen.v1
    assert f.DESCRIPTOR.package == "feature_serving.v1"
    service = f.DESCRIPTOR.services_by_name["FeatureService"]
    assert service.full_name == "feature_serving.v1.FeatureService"
    assert [m.name for m in service.methods] == [
        "GetFeatureVector",
        "ListFeatureViews",
        "ListFeatureServices",
        "GetNodeInfo",
        "SearchNearest",
    ]
    assert hasattr(gen.v1_grpc, "FeatureServiceStub")
    # Same numbers as Feast's FieldStatus, so a status byte means the same in both APIs.
    assert dict(f.FieldStatus.items()) == dict(gen.serving.FieldStatus.items())
    assert f.LAYOUT_COLUMNS == 0
    assert f.LAYOUT_DENSE == 1

    fields = f.GetFeatureVectorRequest.DESCRIPTOR.fields_by_name
    assert {name: fields[name].number for name in fields} == {
        "feature_service": 1,
        "features": 2,
        "entities": 3,
        "include_statuses": 4,
        "include_event_timestamps": 5,
        "layout": 6,
        "request_data": 7,
    }
    resp_fields = f.GetFeatureVectorResponse.DESCRIPTOR.fields_by_name
    assert {name: resp_fields[name].number for name in resp_fields} == {
        "feature_names": 1,
        "num_entities": 2,
        "columns": 3,
        "dense": 4,
    }
    # Packed repeated scalars: a column is one length-delimited field.
    col = f.Int64Column(values=[1, 2, 3]).SerializeToString()
    assert col == bytes([0x0A, 0x03, 1, 2, 3])

    req = f.GetFeatureVectorRequest(
        features=f.FeatureRefs(refs=["user_profile:f000"]),
        entities={"user_id": f.EntityColumn(int64_values=f.Int64Column(values=[1, 2]))},
        include_statuses=True,
        layout=f.LAYOUT_DENSE,
    )
    parsed = f.GetFeatureVectorRequest.FromString(req.SerializeToString())
    assert parsed.WhichOneof("selector") == "features"
    assert parsed.entities["user_id"].WhichOneof("values") == "int64_values"
    assert list(parsed.entities["user_id"].int64_values.values) == [1, 2]


def test_v1_feature_row(gen: SimpleNamespace) -> None:
    r = gen.row
    row = r.FeatureRow(
        join_keys={"user_id": r.EntityValue(int64_value=42)},
        event_timestamp_micros=1_704_067_200_000_000,
        features={
            "f000": r.FeatureValue(float_value=1.5),
            "f001": r.FeatureValue(null_value=r.Null()),
        },
    )
    parsed = r.FeatureRow.FromString(row.SerializeToString())
    assert parsed.features["f001"].WhichOneof("value") == "null_value"
    assert parsed.features["f000"].float_value == 1.5


def test_skips_when_up_to_date(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    protos = tmp_path / "proto"
    shutil.copytree(PROTO_DIR, protos)
    out = tmp_path / "out"
    args = ["--proto-dir", str(protos), "--out", str(out)]

    assert _codegen.main(args) == 0
    assert "generated" in capsys.readouterr().out
    target = out / "feast/types/Value_pb2.py"
    before = target.stat().st_mtime_ns

    assert _codegen.main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert target.stat().st_mtime_ns == before

    # A .proto newer than the outputs triggers regeneration.
    source = protos / "feast/types/Value.proto"
    future = before + 10_000_000_000
    os.utime(source, ns=(future, future))
    assert _codegen.main(args) == 0
    assert "generated" in capsys.readouterr().out

    # A deleted .proto's modules disappear on the next run; hand-written files are kept.
    (out / "__init__.py").write_text("")
    (protos / "feature_serving/v1/feature_row.proto").unlink()
    assert _codegen.main([*args, "--force"]) == 0
    assert not (out / "feature_serving/v1/feature_row_pb2.py").exists()
    assert (out / "feature_serving/v1/feature_service_pb2.py").exists()
    assert (out / "__init__.py").exists()
