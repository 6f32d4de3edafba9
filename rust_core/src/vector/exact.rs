//! Exact search: every vector in one contiguous matrix, scanned per query. The distance loop
//! runs over 8 independent accumulators so that the compiler vectorizes it (AVX2 / SSE on
//! x86-64 without target flags); the reference every HNSW recall figure is measured against.

use crate::catalog::vector_index::Metric;
use ahash::AHashMap;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Squared L2 distance.
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// The metric's distance of two vectors as the index holds them (cosine: both normalized).
#[inline]
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::L2 => l2sq(a, b),
        Metric::Cosine | Metric::InnerProduct => 1.0 - dot(a, b),
    }
}

/// A candidate in a max-heap of the k best: the worst on top.
#[derive(PartialEq)]
struct Cand(f32, u64);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

/// Vectors by id in one row-major matrix; removal moves the last row into the hole.
pub struct Flat {
    dim: usize,
    metric: Metric,
    data: Vec<f32>,
    ids: Vec<u64>,
    row_of: AHashMap<u64, usize>,
}

impl Flat {
    pub fn new(dim: usize, metric: Metric) -> Self {
        Self {
            dim,
            metric,
            data: Vec::new(),
            ids: Vec::new(),
            row_of: AHashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn memory_bytes(&self) -> usize {
        self.data.capacity() * 4 + self.ids.capacity() * 8 + self.row_of.capacity() * 24
    }

    pub fn upsert(&mut self, id: u64, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        if let Some(&r) = self.row_of.get(&id) {
            self.data[r * self.dim..(r + 1) * self.dim].copy_from_slice(v);
        } else {
            self.row_of.insert(id, self.ids.len());
            self.ids.push(id);
            self.data.extend_from_slice(v);
        }
    }

    pub fn remove(&mut self, id: u64) {
        let Some(r) = self.row_of.remove(&id) else {
            return;
        };
        let last = self.ids.len() - 1;
        if r != last {
            let moved = self.ids[last];
            self.ids[r] = moved;
            self.data
                .copy_within(last * self.dim..(last + 1) * self.dim, r * self.dim);
            self.row_of.insert(moved, r);
        }
        self.ids.pop();
        self.data.truncate(last * self.dim);
    }

    /// The `k` nearest ids that `accept` lets through, nearest first (ties by id).
    pub fn search(&self, q: &[f32], k: usize, accept: &dyn Fn(u64) -> bool) -> Vec<(u64, f32)> {
        let mut heap: BinaryHeap<Cand> = BinaryHeap::with_capacity(k + 1);
        if k == 0 {
            return Vec::new();
        }
        for (row, &id) in self.data.chunks_exact(self.dim).zip(&self.ids) {
            let d = distance(self.metric, q, row);
            if heap.len() == k && heap.peek().is_some_and(|w| Cand(d, id) >= *w) {
                continue;
            }
            if !accept(id) {
                continue;
            }
            heap.push(Cand(d, id));
            if heap.len() > k {
                heap.pop();
            }
        }
        let mut out: Vec<(u64, f32)> = heap.into_iter().map(|c| (c.1, c.0)).collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_loops_match_plain_sums() {
        let a: Vec<f32> = (0..131).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..131).map(|i| (i as f32 * 0.11).cos()).collect();
        let l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((l2sq(&a, &b) - l2).abs() < 1e-3);
        assert!((dot(&a, &b) - d).abs() < 1e-3);
    }

    #[test]
    fn upsert_remove_and_search_in_order() {
        let mut f = Flat::new(2, Metric::L2);
        for i in 0..10u64 {
            f.upsert(i, &[i as f32, 0.0]);
        }
        f.upsert(3, &[100.0, 0.0]);
        f.remove(0);
        f.remove(42);
        assert_eq!(f.len(), 9);
        let got = f.search(&[0.0, 0.0], 3, &|_| true);
        assert_eq!(got.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 4]);
        assert!((got[0].1 - 1.0).abs() < 1e-6);
        let odd = f.search(&[0.0, 0.0], 2, &|id| id % 2 == 1);
        assert_eq!(odd.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 5]);
    }
}
