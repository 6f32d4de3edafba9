//! Entity keys: typed, composite-capable, deterministic bytes.
//!
//! Each join key value is encoded in the view's join-key order: integers as big-endian with the
//! sign bit flipped (so byte order is numeric order, which keeps RocksDB range scans meaningful),
//! strings and bytes as a big-endian u32 length followed by the bytes. The same value always
//! gives the same bytes, so the encoding doubles as the Kafka message key.

use crate::error::Result;
use crate::invalid;
use crate::types::KeyType;

/// One join-key column of a request or write batch, borrowed or owned.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyColumn {
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Str(Vec<String>),
    Bytes(Vec<Vec<u8>>),
}

impl KeyColumn {
    pub fn len(&self) -> usize {
        match self {
            Self::Int64(v) => v.len(),
            Self::Int32(v) => v.len(),
            Self::Str(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Int64(_) => "int64",
            Self::Int32(_) => "int32",
            Self::Str(_) => "string",
            Self::Bytes(_) => "bytes",
        }
    }

    /// Row `i` as text, for error messages.
    pub fn display(&self, i: usize) -> String {
        match self {
            Self::Int64(v) => v[i].to_string(),
            Self::Int32(v) => v[i].to_string(),
            Self::Str(v) => format!("{:?}", v[i]),
            Self::Bytes(v) => format!("{:?}", String::from_utf8_lossy(&v[i])),
        }
    }

    /// Appends the encoding of row `i` as a value of type `ty`. Integer columns are accepted for
    /// either integer key type when the value fits (JSON has one number type).
    pub fn encode_into(&self, i: usize, ty: KeyType, name: &str, out: &mut Vec<u8>) -> Result<()> {
        match (self, ty) {
            (Self::Int64(v), KeyType::Int64) => encode_i64(v[i], out),
            (Self::Int32(v), KeyType::Int64) => encode_i64(i64::from(v[i]), out),
            (Self::Int32(v), KeyType::Int32) => encode_i32(v[i], out),
            (Self::Int64(v), KeyType::Int32) => {
                let x = i32::try_from(v[i]).map_err(|_| {
                    invalid!("join key '{name}': value {} does not fit int32", v[i])
                })?;
                encode_i32(x, out);
            }
            (Self::Str(v), KeyType::String) => encode_bytes(v[i].as_bytes(), out),
            (Self::Bytes(v), KeyType::Bytes) => encode_bytes(&v[i], out),
            (col, ty) => {
                return Err(invalid!(
                    "join key '{name}' has type {} but the request gives {} values",
                    ty.name(),
                    col.type_name()
                ))
            }
        }
        Ok(())
    }
}

#[inline]
pub fn encode_i64(x: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&((x as u64) ^ (1 << 63)).to_be_bytes());
}

#[inline]
pub fn encode_i32(x: i32, out: &mut Vec<u8>) {
    out.extend_from_slice(&((x as u32) ^ (1 << 31)).to_be_bytes());
}

#[inline]
pub fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// A decoded join-key value (for tooling and tests; the serving path never decodes keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    Int64(i64),
    Int32(i32),
    Str(String),
    Bytes(Vec<u8>),
}

/// Decodes a key encoded for `types`; `None` if the bytes do not match.
pub fn decode_key(mut b: &[u8], types: &[KeyType]) -> Option<Vec<KeyValue>> {
    let mut out = Vec::with_capacity(types.len());
    for ty in types {
        match ty {
            KeyType::Int64 => {
                let (head, rest) = b.split_at_checked(8)?;
                out.push(KeyValue::Int64(
                    (u64::from_be_bytes(head.try_into().ok()?) ^ (1 << 63)) as i64,
                ));
                b = rest;
            }
            KeyType::Int32 => {
                let (head, rest) = b.split_at_checked(4)?;
                out.push(KeyValue::Int32(
                    (u32::from_be_bytes(head.try_into().ok()?) ^ (1 << 31)) as i32,
                ));
                b = rest;
            }
            KeyType::String | KeyType::Bytes => {
                let (head, rest) = b.split_at_checked(4)?;
                let n = u32::from_be_bytes(head.try_into().ok()?) as usize;
                let (val, rest) = rest.split_at_checked(n)?;
                out.push(if *ty == KeyType::String {
                    KeyValue::Str(String::from_utf8(val.to_vec()).ok()?)
                } else {
                    KeyValue::Bytes(val.to_vec())
                });
                b = rest;
            }
        }
    }
    b.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(cols: &[KeyColumn], types: &[KeyType], i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (c, t) in cols.iter().zip(types) {
            c.encode_into(i, *t, "k", &mut out).unwrap();
        }
        out
    }

    proptest! {
        #[test]
        fn composite_round_trip(a in any::<i64>(), s in ".*", c in any::<i32>(), b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let types = [KeyType::Int64, KeyType::String, KeyType::Int32, KeyType::Bytes];
            let cols = [KeyColumn::Int64(vec![a]), KeyColumn::Str(vec![s.clone()]), KeyColumn::Int32(vec![c]), KeyColumn::Bytes(vec![b.clone()])];
            let key = enc(&cols, &types, 0);
            prop_assert_eq!(decode_key(&key, &types).unwrap(), vec![KeyValue::Int64(a), KeyValue::Str(s), KeyValue::Int32(c), KeyValue::Bytes(b)]);
        }

        #[test]
        fn int64_order_preserved(a in any::<i64>(), b in any::<i64>()) {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            encode_i64(a, &mut ka);
            encode_i64(b, &mut kb);
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        #[test]
        fn distinct_composites_distinct_bytes(s1 in ".{0,8}", s2 in ".{0,8}", t1 in ".{0,8}", t2 in ".{0,8}") {
            let types = [KeyType::String, KeyType::String];
            let k1 = enc(&[KeyColumn::Str(vec![s1.clone()]), KeyColumn::Str(vec![t1.clone()])], &types, 0);
            let k2 = enc(&[KeyColumn::Str(vec![s2.clone()]), KeyColumn::Str(vec![t2.clone()])], &types, 0);
            prop_assert_eq!(k1 == k2, s1 == s2 && t1 == t2);
        }
    }

    #[test]
    fn int_widening_and_range_errors() {
        let mut out = Vec::new();
        KeyColumn::Int32(vec![7])
            .encode_into(0, KeyType::Int64, "user_id", &mut out)
            .unwrap();
        let mut exp = Vec::new();
        encode_i64(7, &mut exp);
        assert_eq!(out, exp);
        let err = KeyColumn::Int64(vec![1 << 40])
            .encode_into(0, KeyType::Int32, "shop_id", &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("shop_id"), "{err}");
        let err = KeyColumn::Str(vec!["x".into()])
            .encode_into(0, KeyType::Int64, "user_id", &mut out)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("join key 'user_id' has type int64"),
            "{err}"
        );
    }
}
