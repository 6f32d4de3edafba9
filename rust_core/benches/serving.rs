//! The serving path on W2 (100 entities x 200 float32 features), per API: parse + plan, read
//! (hot tier), encode, and all of it through `serve::serve`. `make bench` runs it; the figures
//! are in docs/benchmarks.md.

mod fixture;

use criterion::{criterion_group, criterion_main, Criterion};
use rust_core::serve::{self, Caller, ServeConfig};
use std::hint::black_box;

fn serving(c: &mut Criterion) {
    let (_dir, store) = fixture::store();
    let widened = ServeConfig::default();
    let shortest = ServeConfig {
        json_float32_shortest: true,
        ..widened
    };
    let caller = Caller {
        now_us: fixture::NOW,
        ..Caller::default()
    };
    let mut g = c.benchmark_group("w2");
    for (label, api, body) in fixture::requests() {
        let cfg = widened;
        let p = serve::prepare(&store.catalog(), api, &body, &cfg, None).expect("prepares");
        let answer = p.execute(&store, fixture::NOW, None).expect("reads");
        g.bench_function(format!("{label}/parse_plan"), |b| {
            b.iter(|| serve::prepare(&store.catalog(), api, black_box(&body), &cfg, None));
        });
        g.bench_function(format!("{label}/execute"), |b| {
            b.iter(|| p.execute(&store, fixture::NOW, None));
        });
        g.bench_function(format!("{label}/encode"), |b| {
            b.iter(|| p.encode(&answer.cells(p.plan()), &cfg));
        });
        if api == serve::Api::FeastHttp {
            g.bench_function(format!("{label}/encode_f32_shortest"), |b| {
                b.iter(|| p.encode(&answer.cells(p.plan()), &shortest));
            });
        }
        g.bench_function(format!("{label}/serve"), |b| {
            b.iter(|| serve::serve(&store, api, black_box(&body), &cfg, caller));
        });
    }
    g.finish();
}

/// Float text alone, the 20,000 W2 values: ryu against zmij (the choice in Cargo.toml).
fn float_text(c: &mut Criterion) {
    let vals: Vec<f32> = fixture::ids()
        .into_iter()
        .flat_map(|u| (0..fixture::FEATURES).map(move |f| fixture::formula(u, f)))
        .collect();
    let mut out = Vec::with_capacity(1 << 20);
    let mut g = c.benchmark_group("float_text_x20000");
    g.bench_function("ryu_f64_widened", |b| {
        b.iter(|| {
            out.clear();
            for x in &vals {
                out.extend_from_slice(ryu::Buffer::new().format_finite(f64::from(*x)).as_bytes());
                out.push(b',');
            }
            out.len()
        });
    });
    g.bench_function("zmij_f64_widened", |b| {
        b.iter(|| {
            out.clear();
            for x in &vals {
                out.extend_from_slice(zmij::Buffer::new().format_finite(f64::from(*x)).as_bytes());
                out.push(b',');
            }
            out.len()
        });
    });
    g.bench_function("ryu_f32_shortest", |b| {
        b.iter(|| {
            out.clear();
            for x in &vals {
                out.extend_from_slice(ryu::Buffer::new().format_finite(*x).as_bytes());
                out.push(b',');
            }
            out.len()
        });
    });
    g.bench_function("zmij_f32_shortest", |b| {
        b.iter(|| {
            out.clear();
            for x in &vals {
                out.extend_from_slice(zmij::Buffer::new().format_finite(*x).as_bytes());
                out.push(b',');
            }
            out.len()
        });
    });
    g.finish();
}

criterion_group!(benches, serving, float_text);
criterion_main!(benches);
