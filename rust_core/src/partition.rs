//! Kafka's default partitioner for keyed records, the one implementation the project uses.
//!
//! The Java client (`BuiltInPartitioner.partitionForKey`) and librdkafka's `murmur2_random`
//! put a record with key `k` on partition `(murmur2(k) & 0x7fffffff) % num_partitions`.
//! Producers (`serving.kafka_loader.produce_rows`), shard ownership (partition `p` belongs to
//! shard `p % shard_count`) and clients routing by key all call [`partition_for_key`], so
//! they agree with where Kafka put the record. librdkafka's *default* partitioner
//! (`consistent_random`, crc32) does not: producers must set `partitioner=murmur2_random`.

use crate::error::{CoreError, Result};
use crate::invalid;
use ahash::AHashMap;
use std::num::NonZeroU32;

const SEED: u32 = 0x9747_b28c;
const M: u32 = 0x5bd1_e995;
const R: u32 = 24;

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as an unsigned 32-bit
/// value; `as i32` gives the Java client's signed result.
pub fn murmur2(data: &[u8]) -> u32 {
    // Java computes `seed ^ length` on an int; keys are far shorter than 2^32 bytes.
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default keyed partitioner gives `key` among `num_partitions`.
pub fn partition_for_key(key: &[u8], num_partitions: u32) -> Result<u32> {
    let n = NonZeroU32::new(num_partitions)
        .ok_or_else(|| invalid!("num_partitions must be at least 1"))?;
    Ok(partition_of(key, n))
}

/// [`partition_for_key`] for a partition count known to be positive (no check, no `Result`:
/// the Kafka loader's per-record check on the ingest path).
#[inline]
pub fn partition_of(key: &[u8], num_partitions: NonZeroU32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % num_partitions.get()
}

/// [`partition_for_key`] for many keys.
pub fn partitions_for_keys<K: AsRef<[u8]>>(keys: &[K], num_partitions: u32) -> Result<Vec<u32>> {
    if num_partitions == 0 {
        return Err(invalid!("num_partitions must be at least 1"));
    }
    Ok(keys
        .iter()
        .map(|k| (murmur2(k.as_ref()) & 0x7fff_ffff) % num_partitions)
        .collect())
}

/// The shard ownership a serving node enforces: node `index` of `count` answers only the
/// entities whose record key (the entity key without the 4-byte view prefix) lands on a
/// partition `p` with `p % count == index`. Only views listed in `partitions` (those with a
/// stream source, mapped to their topic's partition count) are checked.
#[derive(Debug, Clone)]
pub struct ShardCheck {
    pub index: u32,
    pub count: u32,
    /// View name -> partition count of its stream topic.
    pub partitions: AHashMap<String, u32>,
}

impl ShardCheck {
    pub fn new(index: u32, count: u32, partitions: AHashMap<String, u32>) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(invalid!(
                "shard index must be in 0..{} (shard count {count}), got {index}",
                count.saturating_sub(1)
            ));
        }
        if let Some((v, _)) = partitions.iter().find(|(_, p)| **p == 0) {
            return Err(invalid!(
                "view '{v}': the topic partition count must be at least 1"
            ));
        }
        Ok(Self {
            index,
            count,
            partitions,
        })
    }

    /// Checks the hot-tier keys (`view prefix + record key`) of `view`'s entities; `describe`
    /// names entity `i` in the error (`user_id=17`).
    pub fn check(
        &self,
        view: &str,
        keys: &[Vec<u8>],
        describe: impl Fn(usize) -> String,
    ) -> Result<()> {
        let Some(&n) = self.partitions.get(view) else {
            return Ok(());
        };
        for (i, k) in keys.iter().enumerate() {
            let p = (murmur2(k.get(4..).unwrap_or_default()) & 0x7fff_ffff) % n;
            let owner = p % self.count;
            if owner != self.index {
                return Err(CoreError::WrongShard(format!(
                    "entity {} of feature view '{view}' belongs to shard {owner} of {} \
                     (partition {p} of {n}); this node is shard {} of {}: ask shard {owner}",
                    describe(i),
                    self.count,
                    self.index,
                    self.count,
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apache Kafka's `UtilsTest.testMurmur2` vectors (the Java client's signed results).
    const JAVA: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];

    #[test]
    fn matches_the_java_client() {
        for (input, want) in JAVA {
            assert_eq!(
                murmur2(input) as i32,
                want,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn matches_librdkafka_vectors() {
        // librdkafka's rdmurmur2.c unit test (unsigned values)
        assert_eq!(murmur2(b"kafka"), 0xd067_cf64);
        assert_eq!(murmur2(b"giberish123456789"), 0x8f55_2b0c);
        assert_eq!(murmur2(b""), 0x106e_08d9);
        assert_eq!(murmur2(b"1234"), (-1_614_185_708_i32) as u32);
    }

    #[test]
    fn covers_every_tail_length() {
        // 1, 2 and 3 trailing bytes after whole 4-byte words (Akka's vectors from the Java client)
        for (input, want) in [
            (&b"1"[..], -1_993_445_489_i32),
            (b"12", 126_087_238),
            (b"123", -267_702_483),
            (b"1234", -1_614_185_708),
            (b"12345", -1_188_365_604),
        ] {
            assert_eq!(murmur2(input) as i32, want);
        }
    }

    #[test]
    fn partition_is_positive_hash_mod_count() {
        // toPositive(-790332482) = 1357151166; 1357151166 % 50 = 16
        assert_eq!(partition_for_key(b"foobar", 50).unwrap(), 16);
        assert_eq!(partition_for_key(b"foobar", 1).unwrap(), 0);
        let keys: Vec<Vec<u8>> = (0..100_u64).map(|i| i.to_be_bytes().to_vec()).collect();
        let batch = partitions_for_keys(&keys, 4).unwrap();
        for (k, p) in keys.iter().zip(&batch) {
            assert_eq!(partition_for_key(k, 4).unwrap(), *p);
            assert!(*p < 4);
        }
        // all four partitions get some of 100 keys
        for p in 0..4 {
            assert!(batch.contains(&p));
        }
    }

    #[test]
    fn shard_check_refuses_keys_of_other_shards() {
        let mut parts = AHashMap::new();
        parts.insert("users".to_string(), 4);
        let check = ShardCheck::new(0, 2, parts).unwrap();
        let keys: Vec<Vec<u8>> = (0..100_u64)
            .map(|i| {
                let mut k = vec![0, 0, 0, 7];
                k.extend_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        for k in &keys {
            let p = partition_for_key(&k[4..], 4).unwrap();
            let r = check.check("users", std::slice::from_ref(k), |_| "x=1".into());
            if p.is_multiple_of(2) {
                assert!(r.is_ok());
            } else {
                let e = r.unwrap_err().to_string();
                assert!(e.contains(&format!("belongs to shard 1 of 2 (partition {p} of 4)")));
            }
            // unsharded views are not checked
            assert!(check
                .check("other", std::slice::from_ref(k), |_| String::new())
                .is_ok());
        }
        assert!(ShardCheck::new(2, 2, AHashMap::new()).is_err());
    }

    #[test]
    fn zero_partitions_is_an_error() {
        assert!(partition_for_key(b"x", 0).is_err());
        assert!(partitions_for_keys(&[b"x"], 0).is_err());
    }
}
