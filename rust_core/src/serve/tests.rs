//! Tests of the serving path, and the fixture the router's tests share.

use super::*;
use crate::catalog::ViewDef;
use crate::error::CoreError;
use crate::key::KeyColumn;
use crate::proto::{feast, v1};
use crate::query::{Cell, RowState};
use crate::row::{BatchRowWriter, ValueRef};
use crate::store::StoreOptions;
use crate::types::{DType, Status};
use feast::value::Val;
use prost::Message as _;
use std::collections::BTreeMap;

pub(crate) const TS_2024: i64 = 1_704_067_200_000_000;
/// "now" of the tests: one day after 2024-01-01.
pub(crate) const NOW: i64 = TS_2024 + 86_400_000_000;

pub(crate) fn registry(n_features: usize) -> String {
    let feats: Vec<String> = (0..n_features)
        .map(|i| format!(r#"{{"name":"f{i:03}","dtype":"float32"}}"#))
        .collect();
    format!(
        r#"{{"project":"t","feature_views":[
          {{"name":"user_profile","join_keys":[{{"name":"user_id","dtype":"int64"}}],"features":[{}]}},
          {{"name":"kitchen","join_keys":[{{"name":"sku","dtype":"string"}}],"features":[
            {{"name":"b","dtype":"bool"}},{{"name":"i32","dtype":"int32"}},{{"name":"i64","dtype":"int64"}},
            {{"name":"f64","dtype":"float64"}},{{"name":"s","dtype":"string"}},{{"name":"y","dtype":"bytes"}},
            {{"name":"t","dtype":"timestamp"}},{{"name":"emb","dtype":"float32_array","dim":3}},
            {{"name":"f32","dtype":"float32"}}]}},
          {{"name":"fresh","join_keys":[{{"name":"user_id","dtype":"int64"}}],"ttl_seconds":3600,
            "features":[{{"name":"score","dtype":"float32"}}]}}],
         "feature_services":[{{"name":"svc","features":[{{"view":"user_profile","feature":"f001"}},{{"view":"fresh","feature":"score"}}]}}]}}"#,
        feats.join(",")
    )
}

/// WORKLOADS' value of feature `f` for user `u`.
fn formula(u: i64, f: usize) -> f32 {
    (((u * 31 + f as i64 * 17) % 1000) as f64 / 10.0) as f32
}

fn write_rows(
    store: &Store,
    view: &str,
    keys: KeyColumn,
    ts: &[i64],
    fill: impl Fn(&mut BatchRowWriter, &ViewDef, usize),
) {
    let cat = store.catalog();
    let def = cat.view(view).unwrap();
    let n = keys.len();
    let ents = Entities::new(vec![("k".into(), keys)]);
    let k = query::encode_keys(def, &[0], &ents, n).unwrap();
    let mut w = BatchRowWriter::new(&def.layout, ts);
    for r in 0..n {
        fill(&mut w, def, r);
    }
    store.write(def, &k, w.finish(), &[]).unwrap();
}

const TRICKY: &str = "he said \"hi\" \\ é 😀\n\t\u{1}";

pub(crate) fn fixture(users: i64, n_features: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        hot_tier_bytes: 64 << 20,
        block_cache_bytes: 8 << 20,
        sync_writes: false,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), &registry(n_features), opts, false).unwrap();
    let ids: Vec<i64> = (0..users).collect();
    write_rows(
        &store,
        "user_profile",
        KeyColumn::Int64(ids.clone()),
        &vec![TS_2024; ids.len()],
        |w, def, r| {
            for f in 0..n_features {
                let slot = def.by_name[&format!("f{f:03}")];
                w.set_fixed(r, slot, &formula(r as i64, f).to_le_bytes());
            }
        },
    );
    write_rows(
        &store,
        "kitchen",
        KeyColumn::Str(vec!["a".into(), "b".into()]),
        &[TS_2024 + 500_000, TS_2024],
        |w, def, r| {
            let s = |n: &str| def.by_name[n];
            if r == 0 {
                w.set_fixed(r, s("b"), &[1]);
                w.set_fixed(r, s("i32"), &(-5i32).to_le_bytes());
                w.set_fixed(r, s("i64"), &(1i64 << 40).to_le_bytes());
                w.set_fixed(r, s("f64"), &0.1f64.to_le_bytes());
                w.set_var(r, s("s"), Some(TRICKY.as_bytes()));
                w.set_var(r, s("y"), Some(&[0, 255, 1]));
                w.set_fixed(r, s("t"), &(TS_2024 + 1_500).to_le_bytes());
                let emb: Vec<u8> = [1.5f32, -2.0, f32::NAN]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                w.set_fixed(r, s("emb"), &emb);
                w.set_fixed(r, s("f32"), &4.8f32.to_le_bytes());
            } else {
                w.set_var(r, s("s"), None);
                w.set_var(r, s("y"), None);
            }
        },
    );
    write_rows(
        &store,
        "fresh",
        KeyColumn::Int64(vec![1, 2]),
        &[NOW - 10_000_000, NOW - 7_200_000_000],
        |w, def, r| {
            w.set_fixed(r, def.by_name["score"], &(r as f32 + 1.5).to_le_bytes());
        },
    );
    (dir, store)
}

pub(crate) fn cfg() -> ServeConfig {
    ServeConfig::default()
}

/// [`serve`] for a caller without a scope, on a node without shards, at `now_us`.
pub(crate) fn serve_at(
    api: Api,
    store: &Store,
    body: &[u8],
    cfg: &ServeConfig,
    now_us: i64,
) -> Result<Served> {
    let caller = Caller {
        now_us,
        ..Caller::default()
    };
    serve(store, api, body, cfg, caller)
}

/// A cell read by the general path of the row codec (`RowView::value`, no fast path): what
/// the cells the encoders read are checked against.
fn slow_cell<'a>(plan: &'a Plan, a: &'a Answer, c: usize, e: usize) -> Cell<'a> {
    let col = &plan.columns[c];
    let (status, value, event_ts) = match &a.rows[col.view][e] {
        RowState::NotFound => (Status::NotFound, ValueRef::Null, 0),
        RowState::Expired(ts) => (Status::OutsideMaxAge, ValueRef::Null, *ts),
        RowState::Live(row) => {
            let ts = row.event_ts();
            match row.view().value(&plan.views[col.view].def.layout, col.slot) {
                ValueRef::Missing => (Status::NotFound, ValueRef::Null, ts),
                ValueRef::Null => (Status::NullValue, ValueRef::Null, ts),
                v => (Status::Present, v, ts),
            }
        }
    };
    Cell {
        status,
        value,
        event_ts,
    }
}

fn http(store: &Store, body: &str) -> String {
    let s = serve_at(Api::FeastHttp, store, body.as_bytes(), &cfg(), NOW).unwrap();
    String::from_utf8(s.body).unwrap()
}

#[test]
fn feast_http_exact_bytes() {
    let (_d, store) = fixture(10, 5);
    let body = r#"{"features":["user_profile:f001","user_profile:f000"],"entities":{"user_id":[1,99]},"include_feature_view_version_metadata":true}"#;
    let served = serve_at(Api::FeastHttp, &store, body.as_bytes(), &cfg(), NOW).unwrap();
    assert_eq!(served.views, ["user_profile"]);
    assert_eq!((served.num_entities, served.num_features), (2, 2));
    let expected = concat!(
        r#"{"metadata":{"feature_names":["user_id","f001","f000"]},"results":["#,
        r#"{"values":[1,99],"statuses":["PRESENT","PRESENT"],"event_timestamps":["1970-01-01T00:00:00Z","1970-01-01T00:00:00Z"]},"#,
        r#"{"values":[4.800000190734863,null],"statuses":["PRESENT","NOT_FOUND"],"event_timestamps":["2024-01-01T00:00:00Z","1970-01-01T00:00:00Z"]},"#,
        r#"{"values":[3.0999999046325684,null],"statuses":["PRESENT","NOT_FOUND"],"event_timestamps":["2024-01-01T00:00:00Z","1970-01-01T00:00:00Z"]}"#,
        "]}"
    );
    assert_eq!(String::from_utf8(served.body).unwrap(), expected);

    let short = ServeConfig {
        json_float32_shortest: true,
        ..cfg()
    };
    let out = serve_at(Api::FeastHttp, &store, body.as_bytes(), &short, NOW)
        .unwrap()
        .body;
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(r#"{"values":[4.8,null]"#), "{out}");
    assert!(out.contains(r#"{"values":[3.1,null]"#), "{out}");
}

#[test]
fn feast_http_full_names_service_and_ttl() {
    let (_d, store) = fixture(10, 5);
    let out = http(
        &store,
        r#"{"feature_service":"svc","entities":{"user_id":[1,2,3]},"full_feature_names":true}"#,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["metadata"]["feature_names"],
        serde_json::json!(["user_id", "user_profile__f001", "fresh__score"])
    );
    let score = &v["results"][2];
    assert_eq!(score["values"], serde_json::json!([1.5, null, null]));
    assert_eq!(
        score["statuses"],
        serde_json::json!(["PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"])
    );
    assert_eq!(
        score["event_timestamps"],
        serde_json::json!([
            "2024-01-01T23:59:50Z",
            "2024-01-01T22:00:00Z",
            "1970-01-01T00:00:00Z"
        ])
    );
    let served = serve_at(
        Api::FeastHttp,
        &store,
        br#"{"feature_service":"svc","entities":{"user_id":[1]}}"#,
        &cfg(),
        NOW,
    )
    .unwrap();
    assert_eq!(served.views, ["user_profile", "fresh"]);
    // Feast's request model: `features` defaults to [] beside a feature service, and an
    // empty `feature_service` means none.
    for body in [
        r#"{"feature_service":"svc","features":[],"entities":{"user_id":[1,2,3]},"full_feature_names":true}"#,
        r#"{"feature_service":"","features":["user_profile:f001","fresh:score"],"entities":{"user_id":[1,2,3]},"full_feature_names":true}"#,
    ] {
        assert_eq!(http(&store, body), out, "{body}");
    }
}

#[test]
fn feast_http_every_type() {
    let (_d, store) = fixture(2, 2);
    let out = http(
        &store,
        r#"{"features":["kitchen:b","kitchen:i32","kitchen:i64","kitchen:f64","kitchen:s","kitchen:y","kitchen:t","kitchen:emb","kitchen:f32"],"entities":{"sku":["a","b","zz"]}}"#,
    );
    let expected = concat!(
        r#"{"metadata":{"feature_names":["sku","b","i32","i64","f64","s","y","t","emb","f32"]},"results":["#,
        r#"{"values":["a","b","zz"],"statuses":["PRESENT","PRESENT","PRESENT"],"event_timestamps":["1970-01-01T00:00:00Z","1970-01-01T00:00:00Z","1970-01-01T00:00:00Z"]},"#,
    );
    assert!(out.starts_with(expected), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let col = |i: usize| &v["results"][i + 1];
    let vals: Vec<serde_json::Value> = (0..9).map(|i| col(i)["values"][0].clone()).collect();
    assert_eq!(
        serde_json::Value::Array(vals),
        serde_json::json!([
            true,
            -5,
            1_099_511_627_776i64,
            0.1,
            TRICKY,
            "AP8B",
            1_704_067_200,
            [1.5, -2.0, null],
            4.800_000_190_734_863
        ])
    );
    for i in 0..9 {
        assert_eq!(col(i)["values"][1], serde_json::Value::Null, "col {i}");
        assert_eq!(col(i)["statuses"][0], "PRESENT");
        assert_eq!(col(i)["statuses"][1], "NULL_VALUE", "col {i}");
        assert_eq!(col(i)["statuses"][2], "NOT_FOUND");
        assert_eq!(col(i)["event_timestamps"][0], "2024-01-01T00:00:00.500Z");
        assert_eq!(col(i)["event_timestamps"][1], "2024-01-01T00:00:00Z");
        assert_eq!(col(i)["event_timestamps"][2], "1970-01-01T00:00:00Z");
    }
    assert!(
        out.contains(r#""he said \"hi\" \\ é 😀\n\t\u0001""#),
        "{out}"
    );
}

fn err(api: Api, store: &Store, body: &[u8]) -> CoreError {
    serve_at(api, store, body, &cfg(), NOW).unwrap_err()
}

#[test]
fn json_bad_input() {
    let (_d, store) = fixture(3, 5);
    let cases: &[(&str, &str)] = &[
        (
            r#"{"features":["user_profile:f000"]}"#,
            "missing 'entities'",
        ),
        (r#"{"entities":{"user_id":[1]}}"#, "missing 'features'"),
        (
            r#"{"features":["user_profile:f000"],"feature_service":"svc","entities":{"user_id":[1]}}"#,
            "not both",
        ),
        (
            r#"{"features":["user_profile:f000",7],"entities":{"user_id":[1]}}"#,
            "features[1] must be a \"view:feature\" string, not the number 7",
        ),
        (
            r#"{"features":"user_profile:f000","entities":{"user_id":[1]}}"#,
            "'features' as a list",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[]}}"#,
            "join key 'user_id' has no values",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{}}"#,
            "no entities given",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[1,"x"]}}"#,
            "join key 'user_id' value #1 is the string \"x\" after numbers",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[1.5]}}"#,
            "join key 'user_id' value #0 is the non-integer number 1.5",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[1,1e20]}}"#,
            "join key 'user_id' value #1 is the integer 1e20, which is out of range for int64 \
             (-9223372036854775808 to 9223372036854775807)",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[100000000000000000000]}}"#,
            "join key 'user_id' value #0 is the integer 1e20, which is out of range for int64",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[9223372036854775808]}}"#,
            "join key 'user_id' value #0 is the integer 9223372036854775808, which is out of \
             range for int64",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[3.0]}}"#,
            "join key 'user_id' value #0 is the number 3 in floating-point form",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[true]}}"#,
            "join key 'user_id' value #0 is the boolean true",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[null]}}"#,
            "join key 'user_id' value #0 is null",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[[1]]}}"#,
            "join key 'user_id' value #0 is a list",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":5}}"#,
            "a list of values for join key 'user_id'",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":["1"]}}"#,
            "join key 'user_id' has type int64 but the request gives string values",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[1],"shop":[2]}}"#,
            "entity column 'shop' is not a join key",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[1,2],"user_id":[3]}}"#,
            "'user_id' is given twice",
        ),
        (
            r#"{"features":["user_profile"],"entities":{"user_id":[1]}}"#,
            "'user_profile' is not of the form",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[1]}"#,
            "invalid JSON request body: EOF while parsing an object at line 1 column 60",
        ),
        (
            r"[]",
            "invalid JSON request body: invalid type: sequence, expected a JSON object",
        ),
        (
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[1]}} x"#,
            "trailing characters",
        ),
    ];
    for (body, want) in cases {
        let e = err(Api::FeastHttp, &store, body.as_bytes());
        assert!(matches!(e, CoreError::InvalidArgument(_)), "{body}: {e:?}");
        assert!(e.to_string().contains(want), "{body}: {e}");
    }
    let nf: &[(&str, &str)] = &[
        (
            r#"{"features":["user_profle:f000"],"entities":{"user_id":[1]}}"#,
            "unknown feature view 'user_profle' (did you mean 'user_profile'?)",
        ),
        (
            r#"{"features":["user_profile:f999"],"entities":{"user_id":[1]}}"#,
            "has no feature 'f999'",
        ),
        (
            r#"{"feature_service":"nope","entities":{"user_id":[1]}}"#,
            "unknown feature service 'nope'",
        ),
    ];
    for (body, want) in nf {
        let e = err(Api::FeastHttp, &store, body.as_bytes());
        assert!(matches!(e, CoreError::NotFound(_)), "{body}: {e:?}");
        assert!(e.to_string().contains(want), "{body}: {e}");
    }
    let tight = ServeConfig {
        limits: Limits {
            max_entities: 2,
            max_features: 10,
        },
        ..cfg()
    };
    let e = serve_at(
        Api::FeastHttp,
        &store,
        br#"{"features":["user_profile:f000"],"entities":{"user_id":[1,2,3]}}"#,
        &tight,
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, CoreError::LimitExceeded(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("3 entities requested; the limit is 2"),
        "{e}"
    );
    let e = err(
        Api::V1Http,
        &store,
        br#"{"features":["user_profile:f000"],"entities":{"user_id":[1]},"layout":"rows"}"#,
    );
    assert!(e.to_string().contains("not \"rows\""), "{e}");
}

pub(crate) fn fv(v: Val) -> feast::Value {
    feast::Value { val: Some(v) }
}

pub(crate) fn feast_req(
    features: &[&str],
    entities: Vec<(&str, Vec<feast::Value>)>,
) -> feast::GetOnlineFeaturesRequest {
    feast::GetOnlineFeaturesRequest {
        kind: Some(feast::get_online_features_request::Kind::Features(
            feast::FeatureList {
                val: features.iter().map(|s| (*s).to_string()).collect(),
            },
        )),
        entities: entities
            .into_iter()
            .map(|(k, v)| (k.to_string(), feast::RepeatedValue { val: v }))
            .collect(),
        full_feature_names: false,
        request_context: BTreeMap::new(),
    }
}

/// What prost encodes for the same answer: the reference for the hand-written encoder.
fn feast_oracle(p: &Prepared, a: &Answer) -> feast::GetOnlineFeaturesResponse {
    use feast::get_online_features_response::FeatureVector;
    let n = a.num_entities;
    let mut names: Vec<String> = p.entities.columns.iter().map(|c| c.0.clone()).collect();
    let mut results = Vec::new();
    for (_, col) in &p.entities.columns {
        let values = (0..n)
            .map(|i| {
                fv(match col {
                    KeyColumn::Int64(v) => Val::Int64Val(v[i]),
                    KeyColumn::Int32(v) => Val::Int32Val(v[i]),
                    KeyColumn::Str(v) => Val::StringVal(v[i].clone()),
                    KeyColumn::Bytes(v) => Val::BytesVal(v[i].clone()),
                })
            })
            .collect();
        results.push(FeatureVector {
            values,
            statuses: vec![1; n],
            event_timestamps: vec![feast::Timestamp::default(); n],
        });
    }
    for c in 0..p.plan.columns.len() {
        names.push(p.feast_name(c).into_owned());
        let mut r = FeatureVector {
            values: vec![],
            statuses: vec![],
            event_timestamps: vec![],
        };
        for i in 0..n {
            let cell = slow_cell(&p.plan, a, c, i);
            r.values.push(feast::Value {
                val: match cell.value {
                    ValueRef::Null | ValueRef::Missing => None,
                    ValueRef::Bool(b) => Some(Val::BoolVal(b)),
                    ValueRef::Int32(x) => Some(Val::Int32Val(x)),
                    ValueRef::Int64(x) => Some(Val::Int64Val(x)),
                    ValueRef::Float32(x) => Some(Val::FloatVal(x)),
                    ValueRef::Float64(x) => Some(Val::DoubleVal(x)),
                    ValueRef::Str(b) => {
                        Some(Val::StringVal(String::from_utf8_lossy(b).into_owned()))
                    }
                    ValueRef::Bytes(b) => Some(Val::BytesVal(b.to_vec())),
                    ValueRef::Timestamp(us) => {
                        Some(Val::UnixTimestampVal(us.div_euclid(1_000_000)))
                    }
                    ValueRef::Float32Array(b) => Some(Val::FloatListVal(feast::FloatList {
                        val: b
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                            .collect(),
                    })),
                },
            });
            r.statuses.push(cell.status as i32);
            let ts = if cell.status == Status::NotFound {
                0
            } else {
                cell.event_ts
            };
            r.event_timestamps.push(feast::Timestamp::from_micros(ts));
        }
        results.push(r);
    }
    feast::GetOnlineFeaturesResponse {
        metadata: Some(feast::GetOnlineFeaturesResponseMetadata {
            feature_names: Some(feast::FeatureList { val: names }),
        }),
        results,
    }
}

fn check_against_oracle(store: &Store, api: Api, body: &[u8]) -> Vec<u8> {
    let p = prepare(&store.catalog(), api, body, &cfg(), None).unwrap();
    let a = p.execute(store, NOW, None).unwrap();
    let cells = a.cells(p.plan());
    for c in 0..p.num_features() {
        let col = cells.col(c);
        for e in 0..a.num_entities {
            let (fast, slow) = (cells.cell(col, e), slow_cell(p.plan(), &a, c, e));
            // NaN != NaN: compare the float32 arrays' bytes, the rest by value.
            assert!(
                fast == slow || format!("{fast:?}") == format!("{slow:?}"),
                "column {c} entity {e}: {fast:?} != {slow:?}"
            );
        }
    }
    let ours = p.encode(&cells, &cfg());
    let oracle = match api {
        Api::FeastGrpc => feast_oracle(&p, &a).encode_to_vec(),
        Api::V1Grpc => v1_oracle(&p, &a).encode_to_vec(),
        _ => unreachable!(),
    };
    assert_eq!(ours, oracle, "hand-written encoding differs from prost's");
    ours
}

#[test]
fn feast_grpc_round_trip() {
    let (_d, store) = fixture(10, 5);
    let mut req = feast_req(
        &["user_profile:f002", "fresh:score"],
        vec![(
            "user_id",
            vec![
                fv(Val::Int64Val(1)),
                fv(Val::Int32Val(2)),
                fv(Val::Int64Val(-7)),
            ],
        )],
    );
    req.full_feature_names = true;
    let body = req.encode_to_vec();
    let served = serve_at(Api::FeastGrpc, &store, &body, &cfg(), NOW).unwrap();
    assert_eq!(served.views, ["user_profile", "fresh"]);
    let bytes = check_against_oracle(&store, Api::FeastGrpc, &body);
    assert_eq!(bytes, served.body);
    let r = feast::GetOnlineFeaturesResponse::decode(&*bytes).unwrap();
    assert_eq!(
        r.metadata.unwrap().feature_names.unwrap().val,
        ["user_id", "user_profile__f002", "fresh__score"]
    );
    assert_eq!(r.results.len(), 3);
    assert_eq!(
        r.results[0].values,
        [
            fv(Val::Int64Val(1)),
            fv(Val::Int64Val(2)),
            fv(Val::Int64Val(-7))
        ]
    );
    assert_eq!(r.results[0].statuses, [1, 1, 1]);
    let f2 = &r.results[1];
    assert_eq!(
        f2.values,
        [
            fv(Val::FloatVal(formula(1, 2))),
            fv(Val::FloatVal(formula(2, 2))),
            feast::Value { val: None }
        ]
    );
    assert_eq!(f2.statuses, [1, 1, 3]);
    assert_eq!(
        f2.event_timestamps
            .iter()
            .map(feast::Timestamp::to_micros)
            .collect::<Vec<_>>(),
        [TS_2024, TS_2024, 0]
    );
    let sc = &r.results[2];
    assert_eq!(sc.statuses, [1, 4, 3]);
    assert_eq!(sc.values[0], fv(Val::FloatVal(1.5)));
    assert_eq!(sc.values[1], feast::Value { val: None });

    // Every type, string keys, nulls.
    let body = feast_req(
        &[
            "kitchen:b",
            "kitchen:i32",
            "kitchen:i64",
            "kitchen:f64",
            "kitchen:s",
            "kitchen:y",
            "kitchen:t",
            "kitchen:emb",
            "kitchen:f32",
        ],
        vec![(
            "sku",
            vec![
                fv(Val::StringVal("a".into())),
                fv(Val::StringVal("b".into())),
                fv(Val::StringVal("zz".into())),
            ],
        )],
    )
    .encode_to_vec();
    let bytes = check_against_oracle(&store, Api::FeastGrpc, &body);
    let r = feast::GetOnlineFeaturesResponse::decode(&*bytes).unwrap();
    let first: Vec<Option<Val>> = r.results[1..]
        .iter()
        .map(|c| c.values[0].val.clone())
        .collect();
    assert_eq!(first[0], Some(Val::BoolVal(true)));
    assert_eq!(first[1], Some(Val::Int32Val(-5)));
    assert_eq!(first[2], Some(Val::Int64Val(1 << 40)));
    assert_eq!(first[3], Some(Val::DoubleVal(0.1)));
    assert_eq!(first[4], Some(Val::StringVal(TRICKY.into())));
    assert_eq!(first[5], Some(Val::BytesVal(vec![0, 255, 1])));
    assert_eq!(first[6], Some(Val::UnixTimestampVal(TS_2024 / 1_000_000)));
    let Some(Val::FloatListVal(l)) = &first[7] else {
        panic!("{:?}", first[7])
    };
    assert_eq!(&l.val[..2], &[1.5, -2.0]);
    assert!(l.val[2].is_nan());
    assert_eq!(first[8], Some(Val::FloatVal(4.8)));
    for c in &r.results[1..] {
        assert_eq!(c.statuses, [1, 2, 3]);
        assert_eq!(c.values[1].val, None);
        assert_eq!(c.event_timestamps[0].to_micros(), TS_2024 + 500_000);
    }
}

#[test]
fn feast_grpc_bad_input() {
    let (_d, store) = fixture(3, 5);
    let e = err(Api::FeastGrpc, &store, b"\xff\xff\xff");
    assert!(
        e.to_string()
            .starts_with("malformed GetOnlineFeaturesRequest: "),
        "{e}"
    );
    let mixed = feast_req(
        &["user_profile:f000"],
        vec![(
            "user_id",
            vec![fv(Val::Int64Val(1)), fv(Val::StringVal("x".into()))],
        )],
    );
    let e = err(Api::FeastGrpc, &store, &mixed.encode_to_vec());
    assert!(
        e.to_string()
            .contains("entities['user_id'] value #1 is string_val, but value #0 is int64_val"),
        "{e}"
    );
    let dbl = feast_req(
        &["user_profile:f000"],
        vec![("user_id", vec![fv(Val::DoubleVal(1.0))])],
    );
    let e = err(Api::FeastGrpc, &store, &dbl.encode_to_vec());
    assert!(
        e.to_string().contains("'user_id'] value #0 is double_val"),
        "{e}"
    );
    let mut ctx = feast_req(
        &["user_profile:f000"],
        vec![("user_id", vec![fv(Val::Int64Val(1))])],
    );
    ctx.request_context.insert(
        "val_to_add".into(),
        feast::RepeatedValue {
            val: vec![fv(Val::Int64Val(1))],
        },
    );
    let e = err(Api::FeastGrpc, &store, &ctx.encode_to_vec());
    assert!(
        e.to_string()
            .contains("request_context['val_to_add'] is not a request field"),
        "{e}"
    );
    let mut none = feast_req(&[], vec![("user_id", vec![fv(Val::Int64Val(1))])]);
    none.kind = None;
    let e = err(Api::FeastGrpc, &store, &none.encode_to_vec());
    assert!(
        e.to_string()
            .contains("set either features or feature_service"),
        "{e}"
    );
}

pub(crate) fn v1_req(
    features: &[&str],
    entities: Vec<(&str, v1::entity_column::Values)>,
    layout: v1::Layout,
) -> v1::GetFeatureVectorRequest {
    v1::GetFeatureVectorRequest {
        selector: Some(v1::get_feature_vector_request::Selector::Features(
            v1::FeatureRefs {
                refs: features.iter().map(|s| (*s).to_string()).collect(),
            },
        )),
        entities: entities
            .into_iter()
            .map(|(k, v)| (k.to_string(), v1::EntityColumn { values: Some(v) }))
            .collect(),
        include_statuses: true,
        include_event_timestamps: true,
        layout: layout as i32,
        request_data: BTreeMap::new(),
    }
}

fn v1_oracle(p: &Prepared, a: &Answer) -> v1::GetFeatureVectorResponse {
    use v1::feature_column::Values as V;
    let n = a.num_entities;
    let f = p.plan.columns.len();
    let mut resp = v1::GetFeatureVectorResponse {
        feature_names: p.plan.columns.iter().map(|c| c.reference.clone()).collect(),
        num_entities: n as u32,
        columns: vec![],
        dense: None,
    };
    if p.v1.dense {
        let mut m = v1::DenseMatrix {
            rows: n as u32,
            cols: f as u32,
            ..Default::default()
        };
        for e in 0..n {
            for c in 0..f {
                let (x, s, t) = query::dense_f32(slow_cell(&p.plan, a, c, e));
                m.values.extend_from_slice(&x.to_le_bytes());
                if p.v1.include_statuses {
                    m.statuses.push(s as u8);
                }
                if p.v1.include_event_timestamps {
                    m.event_timestamps.extend_from_slice(&t.to_le_bytes());
                }
            }
        }
        resp.dense = Some(m);
        return resp;
    }
    for (c, col) in p.plan.columns.iter().enumerate() {
        let cells: Vec<_> = (0..n).map(|i| slow_cell(&p.plan, a, c, i)).collect();
        let dim = col.dim as usize;
        macro_rules! typed {
            ($variant:ident, $col:ident, $pat:pat => $e:expr, $zero:expr) => {
                V::$variant(v1::$col {
                    values: cells
                        .iter()
                        .map(|c| match c.value {
                            $pat => $e,
                            _ => $zero,
                        })
                        .collect(),
                })
            };
        }
        let values = match col.dtype {
            DType::Bool => typed!(BoolValues, BoolColumn, ValueRef::Bool(b) => b, false),
            DType::Int32 => typed!(Int32Values, Int32Column, ValueRef::Int32(x) => x, 0),
            DType::Int64 => typed!(Int64Values, Int64Column, ValueRef::Int64(x) => x, 0),
            DType::Float32 => typed!(FloatValues, FloatColumn, ValueRef::Float32(x) => x, 0.0),
            DType::Float64 => {
                typed!(DoubleValues, DoubleColumn, ValueRef::Float64(x) => x, 0.0)
            }
            DType::String => {
                typed!(StringValues, StringColumn, ValueRef::Str(b) => String::from_utf8_lossy(b).into_owned(), String::new())
            }
            DType::Bytes => {
                typed!(BytesValues, BytesColumn, ValueRef::Bytes(b) => b.to_vec(), Vec::new())
            }
            DType::Timestamp => {
                typed!(TimestampValues, TimestampColumn, ValueRef::Timestamp(x) => x, 0)
            }
            DType::Float32Array => V::FloatArrayValues(v1::FloatArrayColumn {
                dim: dim as u32,
                values: cells
                    .iter()
                    .flat_map(|c| match c.value {
                        ValueRef::Float32Array(b) => b
                            .chunks_exact(4)
                            .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                            .collect(),
                        _ => vec![0.0; dim],
                    })
                    .collect(),
            }),
        };
        resp.columns.push(v1::FeatureColumn {
            values: Some(values),
            statuses: if p.v1.include_statuses {
                cells.iter().map(|c| c.status as u8).collect()
            } else {
                vec![]
            },
            event_timestamps: if p.v1.include_event_timestamps {
                cells.iter().map(|c| c.event_ts).collect()
            } else {
                vec![]
            },
        });
    }
    resp
}

#[test]
fn v1_grpc_columns_and_dense() {
    use v1::entity_column::Values as E;
    let (_d, store) = fixture(10, 5);
    let all = [
        "kitchen:b",
        "kitchen:i32",
        "kitchen:i64",
        "kitchen:f64",
        "kitchen:s",
        "kitchen:y",
        "kitchen:t",
        "kitchen:emb",
        "kitchen:f32",
    ];
    let skus = || {
        E::StringValues(v1::StringColumn {
            values: vec!["a".into(), "b".into(), "zz".into()],
        })
    };
    for (st, ts) in [(true, true), (false, false), (true, false)] {
        let mut req = v1_req(&all, vec![("sku", skus())], v1::Layout::Columns);
        req.include_statuses = st;
        req.include_event_timestamps = ts;
        let bytes = check_against_oracle(&store, Api::V1Grpc, &req.encode_to_vec());
        let r = v1::GetFeatureVectorResponse::decode(&*bytes).unwrap();
        assert_eq!(r.num_entities, 3);
        assert_eq!(r.feature_names[4], "kitchen:s");
        assert_eq!(r.columns.len(), 9);
        assert_eq!(
            r.columns[0].statuses,
            if st { vec![1, 2, 3] } else { vec![] }
        );
        if ts {
            assert_eq!(
                r.columns[0].event_timestamps,
                [TS_2024 + 500_000, TS_2024, 0]
            );
        }
        assert_eq!(
            r.columns[4].values,
            Some(v1::feature_column::Values::StringValues(v1::StringColumn {
                values: vec![TRICKY.into(), String::new(), String::new()]
            }))
        );
        let Some(v1::feature_column::Values::FloatArrayValues(emb)) = &r.columns[7].values else {
            panic!()
        };
        assert_eq!(emb.dim, 3);
        assert_eq!(emb.values.len(), 9);
        assert_eq!(&emb.values[3..], &[0.0; 6]);
    }

    let ids = || {
        E::Int64Values(v1::Int64Column {
            values: vec![3, 99, 1],
        })
    };
    let req = v1_req(
        &["user_profile:f000", "fresh:score", "user_profile:f004"],
        vec![("user_id", ids())],
        v1::Layout::Dense,
    );
    let body = req.encode_to_vec();
    let bytes = check_against_oracle(&store, Api::V1Grpc, &body);
    let served = serve_at(Api::V1Grpc, &store, &body, &cfg(), NOW).unwrap();
    assert_eq!(served.body, bytes);
    assert_eq!(served.views, ["user_profile", "fresh"]);
    let r = v1::GetFeatureVectorResponse::decode(&*bytes).unwrap();
    let m = r.dense.unwrap();
    assert_eq!((m.rows, m.cols), (3, 3));
    let vals: Vec<f32> = m
        .values
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals[0].to_bits(), formula(3, 0).to_bits());
    assert!(vals[1].is_nan());
    assert_eq!(vals[2].to_bits(), formula(3, 4).to_bits());
    assert!(vals[3..6].iter().all(|x| x.is_nan()));
    assert_eq!(vals[6..], [formula(1, 0), 1.5, formula(1, 4)]);
    assert_eq!(m.statuses, [1, 3, 1, 3, 3, 3, 1, 1, 1]);
    assert_eq!(m.event_timestamps.len(), 9 * 8);
    let mut no_st = req.clone();
    no_st.include_statuses = false;
    no_st.include_event_timestamps = false;
    let bytes = check_against_oracle(&store, Api::V1Grpc, &no_st.encode_to_vec());
    let m = v1::GetFeatureVectorResponse::decode(&*bytes)
        .unwrap()
        .dense
        .unwrap();
    assert!(m.statuses.is_empty() && m.event_timestamps.is_empty());

    // Dense refuses non-numeric features, naming the feature.
    let bad = v1_req(
        &["kitchen:f32", "kitchen:s"],
        vec![("sku", skus())],
        v1::Layout::Dense,
    );
    let e = err(Api::V1Grpc, &store, &bad.encode_to_vec());
    assert!(matches!(e, CoreError::InvalidArgument(_)));
    assert!(
        e.to_string()
            .contains("feature 'kitchen:s' has type string"),
        "{e}"
    );
    let e = err(Api::V1Grpc, &store, b"\x0a");
    assert!(
        e.to_string()
            .starts_with("malformed GetFeatureVectorRequest"),
        "{e}"
    );
    let mut empty = v1_req(&["user_profile:f000"], vec![], v1::Layout::Columns);
    empty
        .entities
        .insert("user_id".into(), v1::EntityColumn { values: None });
    let e = err(Api::V1Grpc, &store, &empty.encode_to_vec());
    assert!(
        e.to_string().contains("entities['user_id'] has no values"),
        "{e}"
    );
}

#[test]
fn v1_http_shapes() {
    let (_d, store) = fixture(10, 5);
    let s = serve_at(
        Api::V1Http,
        &store,
        br#"{"features":["user_profile:f001","fresh:score"],"entities":{"user_id":[1,2]},"include_statuses":true,"include_event_timestamps":true}"#,
        &cfg(),
        NOW,
    )
    .unwrap();
    let expected = concat!(
        r#"{"feature_names":["user_profile:f001","fresh:score"],"num_entities":2,"columns":["#,
        r#"{"dtype":"float32","values":[4.800000190734863,7.900000095367432],"statuses":["PRESENT","PRESENT"],"event_timestamps":[1704067200000000,1704067200000000]},"#,
        r#"{"dtype":"float32","values":[1.5,null],"statuses":["PRESENT","OUTSIDE_MAX_AGE"],"event_timestamps":[1704153590000000,1704146400000000]}"#,
        "]}"
    );
    assert_eq!(String::from_utf8(s.body).unwrap(), expected);
    let s = serve_at(
        Api::V1Http,
        &store,
        br#"{"features":["user_profile:f001","fresh:score"],"entities":{"user_id":[1,2]},"layout":"dense","include_statuses":true}"#,
        &ServeConfig {
            json_float32_shortest: true,
            ..cfg()
        },
        NOW,
    )
    .unwrap();
    let expected = concat!(
        r#"{"feature_names":["user_profile:f001","fresh:score"],"num_entities":2,"#,
        r#""dense":{"rows":2,"cols":2,"values":[[4.8,1.5],[7.9,null]],"#,
        r#""statuses":[["PRESENT","PRESENT"],["PRESENT","OUTSIDE_MAX_AGE"]]}}"#,
    );
    assert_eq!(String::from_utf8(s.body).unwrap(), expected);
    let s = serve_at(
        Api::V1Http,
        &store,
        br#"{"features":["kitchen:s","kitchen:emb"],"entities":{"sku":["a"]}}"#,
        &cfg(),
        NOW,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(v["columns"][0]["values"][0], TRICKY);
    assert_eq!(
        v["columns"][1]["values"][0],
        serde_json::json!([1.5, -2.0, null])
    );
    assert!(v["columns"][0].get("statuses").is_none());
    assert_eq!(v["columns"][0]["dtype"], "string");
    assert_eq!(v["columns"][1]["dtype"], "float32_array");
    assert_eq!(v["columns"][1]["dim"], 3);
    let e = err(
        Api::V1Http,
        &store,
        br#"{"features":["kitchen:emb"],"entities":{"sku":["a"]},"layout":"dense"}"#,
    );
    assert!(
        e.to_string()
            .contains("'kitchen:emb' has type float32_array"),
        "{e}"
    );
}

/// The Feast JSON of a request encoded on 1 to 5 threads (ranges of columns on threads of
/// their own, appended in order): the same bytes every time, for every type and status, for a
/// W2-sized answer (the one `encode_threads` splits) and with more threads than columns.
#[test]
fn parallel_feast_json_is_the_same_text() {
    let (_d, store) = fixture(120, 200);
    let ids: Vec<String> = (0..130).map(|i| i.to_string()).collect();
    let refs: Vec<String> = (0..200)
        .map(|f| format!("\"user_profile:f{f:03}\""))
        .collect();
    let bodies = [
        format!(
            r#"{{"features":[{}],"entities":{{"user_id":[{}]}}}}"#,
            refs.join(","),
            ids.join(",")
        ),
        format!(
            r#"{{"features":[{}],"entities":{{"user_id":[1,500]}},"full_feature_names":true}}"#,
            refs[..3].join(",")
        ),
        r#"{"features":["kitchen:b","kitchen:i32","kitchen:i64","kitchen:f64","kitchen:s","kitchen:y","kitchen:t","kitchen:emb","kitchen:f32"],"entities":{"sku":["a","b","zz"]}}"#.to_owned(),
    ];
    for body in &bodies {
        let p = prepare(
            &store.catalog(),
            Api::FeastHttp,
            body.as_bytes(),
            &cfg(),
            None,
        )
        .unwrap();
        let answer = p.execute(&store, NOW, None).unwrap();
        let cells = answer.cells(p.plan());
        for shortest in [false, true] {
            let one = encode_json::feast_threads(&p, &cells, shortest, 1);
            for threads in 2..=5 {
                let many = encode_json::feast_threads(&p, &cells, shortest, threads);
                assert!(
                    one == many,
                    "{threads} threads, shortest {shortest}: {body}"
                );
            }
            assert_eq!(encode_json::feast(&p, &cells, shortest, 4), one);
        }
    }
}
