//! A measured comparison of three HNSW crates for the vector index (docs/vector-search.md):
//! recall@10 against brute force, single-query latency at the smallest ef reaching the target
//! recall, build time (2 threads each), memory (RSS growth while building), update support.
//!
//! `cargo run --release -- N QUERIES` (defaults 100000 200), random and clustered data.

use std::time::Instant;

const DIM: usize = 128;
const K: usize = 10;
const M: usize = 16;
const EF_CONSTRUCTION: usize = 128;
const TARGET: f64 = 0.95;

/// SplitMix64: reproducible data without a rand dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn gauss(&mut self) -> f32 {
        let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Random: i.i.d. Gaussian components; clustered: 1,000 Gaussian centres, each point a centre
/// plus noise of 0.3 per component; both normalized (cosine = L2 order).
fn data(n: usize, clustered: bool, seed: u64) -> Vec<Vec<f32>> {
    let mut r = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..1000)
        .map(|_| (0..DIM).map(|_| r.gauss()).collect())
        .collect();
    (0..n)
        .map(|_| {
            let mut v: Vec<f32> = if clustered {
                let c = &centres[(r.next() % 1000) as usize];
                c.iter().map(|x| x + 0.3 * r.gauss()).collect()
            } else {
                (0..DIM).map(|_| r.gauss()).collect()
            };
            normalize(&mut v);
            v
        })
        .collect()
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn exact(base: &[Vec<f32>], q: &[f32]) -> Vec<usize> {
    let mut d: Vec<(f32, usize)> = base.iter().enumerate().map(|(i, v)| (l2(v, q), i)).collect();
    d.select_nth_unstable_by(K, |a, b| a.0.total_cmp(&b.0));
    d.truncate(K);
    d.into_iter().map(|x| x.1).collect()
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

struct Row {
    name: &'static str,
    build_s: f64,
    mem_mib: f64,
    ef: usize,
    recall: f64,
    p50_us: f64,
    p99_us: f64,
}

fn measure(
    queries: &[Vec<f32>],
    truth: &[Vec<usize>],
    search: &mut dyn FnMut(&[f32], usize) -> Vec<usize>,
) -> (usize, f64, f64, f64) {
    for ef in [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512] {
        let mut hits = 0usize;
        let mut lat = Vec::with_capacity(queries.len());
        for (q, t) in queries.iter().zip(truth) {
            let t0 = Instant::now();
            let got = search(q, ef);
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
            hits += got.iter().filter(|g| t.contains(g)).count();
        }
        let recall = hits as f64 / (queries.len() * K) as f64;
        if recall >= TARGET || ef == 512 {
            lat.sort_by(f64::total_cmp);
            let p = |f: f64| lat[((lat.len() as f64 - 1.0) * f) as usize];
            return (ef, recall, p(0.5), p(0.99));
        }
    }
    unreachable!()
}

#[derive(Clone)]
struct P(Vec<f32>);
impl instant_distance::Point for P {
    fn distance(&self, o: &Self) -> f32 {
        l2(&self.0, &o.0)
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let n = args.first().copied().unwrap_or(100_000);
    let nq = args.get(1).copied().unwrap_or(200);
    for clustered in [false, true] {
        let base = data(n, clustered, 42);
        let queries = data(nq, clustered, 7);
        let truth: Vec<Vec<usize>> = queries.iter().map(|q| exact(&base, q)).collect();
        let mut rows = Vec::new();

        // usearch: add and remove by key, searches concurrent with adds.
        {
            let before = rss_kib();
            let t0 = Instant::now();
            let opts = usearch::IndexOptions {
                dimensions: DIM,
                metric: usearch::MetricKind::L2sq,
                quantization: usearch::ScalarKind::F32,
                connectivity: M,
                expansion_add: EF_CONSTRUCTION,
                expansion_search: 64,
                multi: false,
            };
            let idx = usearch::Index::new(&opts).unwrap();
            idx.reserve_capacity_and_threads(n, 2).unwrap();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (idx, base) = (&idx, &base);
                    s.spawn(move || {
                        for i in (t..n).step_by(2) {
                            idx.add(i as u64, &base[i]).unwrap();
                        }
                    });
                }
            });
            let build_s = t0.elapsed().as_secs_f64();
            let mem_mib = (rss_kib() - before) as f64 / 1024.0;
            let (ef, recall, p50, p99) = measure(&queries, &truth, &mut |q, ef| {
                idx.change_expansion_search(ef);
                idx.search(q, K).unwrap().keys.iter().map(|&k| k as usize).collect()
            });
            // update support: remove 1 % and check none is found
            for i in 0..n / 100 {
                idx.remove(i as u64).unwrap();
            }
            let gone = queries
                .iter()
                .all(|q| idx.search(q, K).unwrap().keys.iter().all(|&k| k as usize >= n / 100));
            assert!(gone);
            rows.push(Row { name: "usearch 2.26 (add, remove)", build_s, mem_mib, ef, recall, p50_us: p50, p99_us: p99 });
        }
        // hnsw_rs: insert only, no delete (a removed row stays in the graph: filter + rebuild).
        {
            let before = rss_kib();
            let t0 = Instant::now();
            let h = hnsw_rs::hnsw::Hnsw::<f32, anndists::dist::DistL2>::new(
                M, n, 16, EF_CONSTRUCTION, anndists::dist::DistL2 {},
            );
            let pairs: Vec<(&Vec<f32>, usize)> = base.iter().enumerate().map(|(i, v)| (v, i)).collect();
            h.parallel_insert(&pairs);
            let build_s = t0.elapsed().as_secs_f64();
            let mem_mib = (rss_kib() - before) as f64 / 1024.0;
            let (ef, recall, p50, p99) = measure(&queries, &truth, &mut |q, ef| {
                h.search(q, K, ef).iter().map(|nb| nb.d_id).collect()
            });
            rows.push(Row { name: "hnsw_rs 0.3 (insert; no delete)", build_s, mem_mib, ef, recall, p50_us: p50, p99_us: p99 });
        }
        // instant-distance: built once from all points, immutable.
        {
            let before = rss_kib();
            let t0 = Instant::now();
            let pts: Vec<P> = base.iter().cloned().map(P).collect();
            let vals: Vec<usize> = (0..n).collect();
            let mut maps = Vec::new();
            // ef_search is fixed at build time: one build, then a rebuild per ef is unfair,
            // so build with a generous ef and report it.
            let map = instant_distance::Builder::default()
                .ef_construction(EF_CONSTRUCTION)
                .ef_search(K)
                .build(pts.clone(), vals.clone());
            let build_s = t0.elapsed().as_secs_f64();
            let mem_mib = (rss_kib() - before) as f64 / 1024.0;
            maps.push(map);
            let mut cache: Vec<(usize, instant_distance::HnswMap<P, usize>)> = Vec::new();
            let (ef, recall, p50, p99) = measure(&queries, &truth, &mut |q, ef| {
                // each ef is a rebuild here: start the sweep at 64 (below reaches < 0.95 on
                // the other two crates' graphs of the same M)
                if ef < 64 {
                    return Vec::new();
                }
                if !cache.iter().any(|(e, _)| *e == ef) {
                    // instant-distance fixes ef_search at build time
                    let m = instant_distance::Builder::default()
                        .ef_construction(EF_CONSTRUCTION)
                        .ef_search(ef)
                        .build(pts.clone(), vals.clone());
                    cache.clear();
                    cache.push((ef, m));
                }
                let m = &cache[0].1;
                let mut s = instant_distance::Search::default();
                m.search(&P(q.to_vec()), &mut s).take(K).map(|it| *it.value).collect()
            });
            drop(maps);
            rows.push(Row { name: "instant-distance 0.6 (immutable)", build_s, mem_mib, ef, recall, p50_us: p50, p99_us: p99 });
        }
        let kind = if clustered { "clustered" } else { "random" };
        println!("\n{kind} data, N={n}, dim={DIM}, {nq} queries, M={M}, ef_construction={EF_CONSTRUCTION}, target recall@10 {TARGET}");
        println!("| crate | build s (2 threads) | build vectors/s | RSS growth MiB | ef_search | recall@10 | p50 us | p99 us |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in rows {
            println!(
                "| {} | {:.1} | {:.0} | {:.0} | {} | {:.3} | {:.0} | {:.0} |",
                r.name, r.build_s, n as f64 / r.build_s, r.mem_mib, r.ef, r.recall, r.p50_us, r.p99_us
            );
        }
    }
}
