"""Hostile input: hypothesis throws random bytes, truncated and oversized messages, deeply nested
JSON, huge strings, NaN and infinities, invalid UTF-8 and wrong types at the HTTP and gRPC
request decoders of a real server and at the Kafka decoders (``decode_batch``). Nothing crashes
or hangs, each input gets a clear 4xx / INVALID_ARGUMENT (or a correct answer when it happens to
be valid), and a valid request right after is answered correctly. Each run prints how many
inputs it tried (figures in docs/reliability.md)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import Registry, Store, _rust_core
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1
from serving.loaders.kafka import encode_key
from tests.harness import Server, http, start_server, stop_server
from tests.harness.profile import BASE_US, preload, write_config

pytestmark = pytest.mark.integration

N_USERS = 100
MAX_BYTES = 200_000
EXAMPLES = 1000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    derandomize=False,
)
VALID = {"features": ["profile:f0", "profile:f1"], "entities": {"user_id": [3, 7]}}
tried: dict[str, int] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile")
    config = write_config(tmp, n_features=2)
    preload(config, tmp / "db", N_USERS, 5, 2)
    s = start_server(
        config, tmp / "db", tmp / "log", "--no-auth", "--max-message-bytes", str(MAX_BYTES)
    )
    yield s
    print(f"\ninputs tried: {tried}")
    assert s.proc.poll() is None, "the server died"
    assert stop_server(s) == 0


def _valid_ok(s: Server) -> None:
    status, got = http(s.url + "/get-online-features", VALID)
    assert status == 200, got
    assert [c["values"] for c in got["results"][1:]] == [[5.0, 5.0], [5.0, 5.0]]


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=30,
)
requestish = st.fixed_dictionaries(
    {},
    optional={
        "features": st.one_of(
            json_values,
            st.lists(
                st.sampled_from(
                    ["profile:f0", "profile:f1", "profile:nope", "nope:f0", "", ":", "profile:"]
                ),
                max_size=4,
            ),
        ),
        "feature_service": json_values,
        "entities": st.one_of(
            json_values,
            st.dictionaries(
                st.sampled_from(["user_id", "x", ""]),
                st.lists(json_scalars, max_size=4),
                max_size=2,
            ),
        ),
        "full_feature_names": json_values,
        "layout": json_values,
    },
).map(lambda d: json.dumps(d).encode())
nasty_json = st.sampled_from(
    [
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b'{"features": NaN}',
        b'{"entities": {"user_id": [Infinity]}}',
        b'{"entities": {"user_id": [1e999]}}',
        b'{"features": ["\xff\xfe"], "entities": {"user_id": [1]}}',
        b'{"features": ["profile:f0"], "entities": {"user_id": ["\\ud800"]}}',
        b'{"features": ["' + b"a" * 150_000 + b'"], "entities": {"user_id": [1]}}',
        b'{"features": ["profile:f0"], "entities": {"user_id": [' + b"1," * 60_000 + b"1]}}",
        b"\x00" * 1000,
        b"",
        b"null",
        b"[]",
        b'"str"',
        b"1e400",
    ]
)
bodies = st.one_of(
    st.binary(max_size=2000),
    requestish,
    nasty_json,
    requestish.flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
)


@pytest.mark.parametrize("path", ["/get-online-features", "/v1/feature-vector"])
def test_http_decoders(server: Server, path: str) -> None:
    key = f"http {path}"
    tried[key] = 0

    @FUZZ
    @given(body=bodies)
    def run(body: bytes) -> None:
        tried[key] += 1
        status, got = http(server.url + path, body, timeout=20)
        assert status in (200, 400, 404, 413), (status, got, body[:200])
        if status != 200:
            assert isinstance(got, dict), got
            assert got["error"]["message"], got
        if tried[key] % 25 == 0:
            _valid_ok(server)

    run()
    # oversized: refused by size, not parsed
    status, got = http(server.url + path, b"[" * (MAX_BYTES + 1), timeout=20)
    assert status == 413, got
    tried[key] += 1
    _valid_ok(server)


def _proto_bodies(kind: str) -> st.SearchStrategy[bytes]:
    def valid(users: list[int]) -> bytes:
        if kind == "feast":
            r = feast_pb2.GetOnlineFeaturesRequest()
            r.features.val.extend(["profile:f0"])
            r.entities["user_id"].val.add().int64_val = users[0] if users else 0
        else:
            r = v1.GetFeatureVectorRequest()
            r.features.refs.extend(["profile:f0"])
            r.entities["user_id"].int64_values.values.extend(users)
        return bytes(r.SerializeToString())

    base = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5).map(valid)
    return st.one_of(
        st.binary(max_size=2000),
        base.flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # truncated
        base.flatmap(
            lambda b: st.binary(min_size=1, max_size=50).map(lambda x: b + x)
        ),  # trailing junk
        st.binary(max_size=50).map(lambda x: b"\x0a\xff\xff\xff\xff\x0f" + x),  # huge length prefix
        st.integers(1, 90).map(lambda d: b"\x1a\x02" * d),  # nested-looking
    )


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("feast", "/feast.serving.ServingService/GetOnlineFeatures"),
        ("v1", "/feature_serving.v1.FeatureService/GetFeatureVector"),
    ],
)
def test_grpc_decoders(server: Server, kind: str, method: str) -> None:
    key = f"grpc {kind}"
    tried[key] = 0
    ch = grpc.insecure_channel(
        f"127.0.0.1:{server.grpc}", options=[("grpc.max_send_message_length", -1)]
    )
    call = ch.unary_unary(method)
    ok = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

    @FUZZ
    @given(body=_proto_bodies(kind))
    def run(body: bytes) -> None:
        tried[key] += 1
        code, details = grpc.StatusCode.OK, "ok"
        try:
            call(body, timeout=20)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        assert code == grpc.StatusCode.OK or code in ok, (code, details, body[:100])
        assert details
        if tried[key] % 25 == 0:
            _valid_ok(server)

    try:
        run()
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a" + b"\x00" * (MAX_BYTES + 10), timeout=20)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        tried[key] += 1
    finally:
        ch.close()
    _valid_ok(server)


def test_kafka_decoders(tmp_path: Path) -> None:
    config = write_config(tmp_path, n_features=2, bootstrap="127.0.0.1:1")
    registry = Registry.from_yaml(config)
    view = registry.view("profile")
    good_key = encode_key(view, [1])
    counts = {"json": 0, "protobuf": 0}
    with Store(tmp_path / "db", registry) as store:
        json_values_k = st.one_of(
            st.binary(max_size=500),
            requestish,
            nasty_json,
            st.fixed_dictionaries(
                {
                    "user_id": json_values,
                    "event_timestamp": json_values,
                    "f0": json_values,
                    "f1": json_values,
                }
            ).map(lambda d: json.dumps(d).encode()),
            st.sampled_from(
                [
                    b'{"user_id":1,"event_timestamp":1,"f0":NaN}',
                    b'{"f0":Infinity}',
                    b'{"user_id":1,"event_timestamp":1,"f0":1e999}',
                ]
            ),
        )
        keys = st.one_of(st.none(), st.just(good_key), st.binary(max_size=40))
        floats = st.floats(allow_nan=True, allow_infinity=True, width=32)

        def proto_row(ts: int, f: float) -> bytes:
            from serving._proto.feature_serving.v1 import feature_row_pb2 as pb

            m = pb.FeatureRow(event_timestamp_micros=ts)
            m.join_keys["user_id"].int64_value = 1
            m.features["f0"].float_value = f
            return bytes(m.SerializeToString())

        proto_values = st.one_of(
            st.binary(max_size=500),
            st.builds(proto_row, st.integers(-(2**63), 2**63 - 1), floats),
            st.builds(proto_row, st.just(BASE_US), floats).flatmap(
                lambda b: st.integers(0, len(b)).map(lambda n: b[:n])
            ),
            st.binary(max_size=20).map(lambda x: b"\x12" + struct.pack("B", 0xFF) * 5 + x),
        )

        def fuzz(fmt: str, values: st.SearchStrategy[bytes]) -> None:
            @FUZZ
            @given(
                batch=st.lists(
                    st.tuples(keys, st.one_of(st.none(), values)), min_size=1, max_size=20
                )
            )
            def run(batch: list[tuple[bytes | None, bytes | None]]) -> None:
                counts[fmt] += len(batch)
                records = [(k, v, 0, i, 0) for i, (k, v) in enumerate(batch)]
                out = _rust_core.decode_batch(store.core, "profile", fmt, records)
                assert all(0 <= i < len(batch) and reason for i, reason in out.errors)
                out.write([])

            run()

        fuzz("json", json_values_k)
        fuzz("protobuf", proto_values)
    tried["kafka json records"] = counts["json"]
    tried["kafka protobuf records"] = counts["protobuf"]
    print(f"\nkafka records decoded: {counts}")
