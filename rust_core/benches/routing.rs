//! The router's costs on W2 (100 entities x 200 float32 features, `user_profile` sharded over
//! 3 shards of 4 partitions): split a request into parts, a node's cells answer to all parts,
//! and the merge into the response. `make bench` runs it; the figures are in
//! docs/benchmarks.md.

mod fixture;

use criterion::{criterion_group, criterion_main, Criterion};
use rust_core::catalog::Catalog;
use rust_core::route::Router;
use rust_core::serve::{self, Api, Caller, ServeConfig};
use std::hint::black_box;
use std::sync::Arc;

fn routing(c: &mut Criterion) {
    let (_dir, store) = fixture::store();
    let cat = Catalog::from_spec_json(&fixture::registry()).expect("the registry compiles");
    let partitions = [("user_profile".to_string(), 4)].into_iter().collect();
    let router = Router::new(Arc::new(cat), 3, partitions).expect("a router");
    let cfg = ServeConfig::default();
    let caller = Caller {
        now_us: fixture::NOW,
        ..Caller::default()
    };
    let mut g = c.benchmark_group("route_w2");
    for (label, api, body) in [
        ("v1_grpc_dense", Api::V1Grpc, fixture::v1_dense_body()),
        ("feast_http", Api::FeastHttp, fixture::json_body()),
    ] {
        g.bench_function(format!("{label}/split"), |b| {
            b.iter(|| router.route(api, black_box(&body), &cfg, None, 0));
        });
        let routed = router.route(api, &body, &cfg, None, 0).expect("routes");
        let answer_parts = || -> Vec<Vec<u8>> {
            routed
                .parts
                .iter()
                .map(|p| {
                    serve::serve(&store, Api::Cells, &p.body, &cfg, caller)
                        .expect("a node answers its part")
                        .body
                })
                .collect()
        };
        g.bench_function(format!("{label}/node_cells_answers"), |b| {
            b.iter(answer_parts);
        });
        let answers = answer_parts();
        let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
        g.bench_function(format!("{label}/merge"), |b| {
            b.iter(|| routed.merge(black_box(&slices), &cfg));
        });
        g.bench_function(format!("{label}/one_node_serve"), |b| {
            b.iter(|| serve::serve(&store, api, black_box(&body), &cfg, caller));
        });
    }
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
