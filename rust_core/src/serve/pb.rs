//! A minimal protobuf wire writer: the protobuf encoders write responses straight into one
//! buffer, without intermediate prost structs.

pub const VARINT: u32 = 0;
pub const I64: u32 = 1;
pub const LEN: u32 = 2;
pub const I32: u32 = 5;

#[inline]
pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub fn varint_len(v: u64) -> usize {
    // 1 byte per 7 significant bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
pub fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

#[inline]
pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A length-delimited field whose body `f` writes; the length is patched in afterwards
/// (the body is moved left when the length takes fewer than 5 bytes).
#[inline]
pub fn nested(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    out.extend_from_slice(&[0; 5]);
    f(out);
    let len = out.len() - at - 5;
    let mut tmp = Vec::with_capacity(5);
    varint(&mut tmp, len as u64);
    out[at..at + tmp.len()].copy_from_slice(&tmp);
    if tmp.len() < 5 {
        out.copy_within(at + 5.., at + tmp.len());
        out.truncate(at + tmp.len() + len);
    }
}
