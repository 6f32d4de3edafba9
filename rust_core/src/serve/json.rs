//! Hand-written JSON output primitives for the response encoders in [`crate::serve`].
//!
//! Everything appends to one caller-owned `Vec<u8>`; nothing here allocates except to grow it
//! (and to repair invalid UTF-8, which the row codec never produces for data the loaders wrote).
//!
//! Floats: `zmij` (Schubfach/yy, shortest round-trip text). Measured against `ryu` on the W2
//! values (20,000 float32; now `benches/serving.rs`, group `float_text_x20000`; at the time
//! an ignored timing test, release build, median of 300):
//! widened to f64, ryu 483 us vs zmij 307 us; as f32, ryu 366 us vs zmij 284 us. Both give the
//! same shortest round-trip digits. Non-finite values become `null` (JSON has no NaN).

use base64::Engine as _;

/// `"` + escape + `"`; valid UTF-8 passes through unchanged.
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let e = ESCAPE[c as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        if e == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(c >> 4) as usize]);
            out.push(HEX[(c & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(e);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Like [`write_str`] for bytes meant to be UTF-8; invalid sequences become U+FFFD.
#[inline]
pub fn write_str_bytes(out: &mut Vec<u8>, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => write_str(out, s),
        Err(_) => write_str(out, &String::from_utf8_lossy(b)),
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// 0: no escape; `u`: `\u00XX`; else the character after the backslash.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

#[inline]
pub fn write_i64(out: &mut Vec<u8>, x: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes());
}

#[inline]
pub fn write_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes());
}

#[inline]
pub fn write_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

#[inline]
pub fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

/// Shortest round-trip text of a double; `null` when not finite.
#[inline]
pub fn write_f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        write_null(out);
    }
}

/// A float32 as JSON: widened to a double (`4.800000190734863`, what Feast and protobuf's JSON
/// mapping print) or, with `shortest`, the shortest text that parses back to the same float32
/// (`4.8`). `null` when not finite.
#[inline]
pub fn write_f32(out: &mut Vec<u8>, x: f32, shortest: bool) {
    if !x.is_finite() {
        write_null(out);
    } else if shortest {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(zmij::Buffer::new().format_finite(f64::from(x)).as_bytes());
    }
}

/// Standard base64 with padding, quoted (protobuf's JSON mapping of `bytes`).
pub fn write_base64(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'"');
    let start = out.len();
    let len = b.len().div_ceil(3) * 4;
    out.resize(start + len, 0);
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(b, &mut out[start..])
        .expect("buffer sized for the encoding");
    out.truncate(start + n);
    out.push(b'"');
}

/// `(year, month, day)` of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[inline]
fn two(out: &mut Vec<u8>, x: u32) {
    out.push(b'0' + (x / 10) as u8);
    out.push(b'0' + (x % 10) as u8);
}

/// RFC 3339 UTC text of `micros` since the Unix epoch, quoted: `"2024-01-01T00:00:00Z"`, with
/// 3 or 6 fractional digits when the sub-second part is non-zero (protobuf's JSON mapping of
/// `Timestamp` uses as few of 0, 3, 6, 9 digits as are exact).
pub fn write_rfc3339(out: &mut Vec<u8>, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000) as u32;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    out.push(b'"');
    if (0..10_000).contains(&y) {
        let y = y as u32;
        two(out, y / 100);
        two(out, y % 100);
    } else {
        write_i64(out, y);
    }
    out.push(b'-');
    two(out, m);
    out.push(b'-');
    two(out, d);
    out.push(b'T');
    two(out, sod / 3600);
    out.push(b':');
    two(out, sod / 60 % 60);
    out.push(b':');
    two(out, sod % 60);
    if us != 0 {
        out.push(b'.');
        let (v, digits) = if us.is_multiple_of(1000) {
            (us / 1000, 3)
        } else {
            (us, 6)
        };
        let mut buf = [b'0'; 6];
        let mut v = v;
        for i in (0..digits).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..digits]);
    }
    out.extend_from_slice(b"Z\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn strings_escape_and_round_trip() {
        let tricky = "a\"b\\c\n\t\r\u{1}\u{1f}\u{7f} é 日本 😀 \u{2028}";
        let out = s(|o| write_str(o, tricky));
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), tricky);
        assert!(out.contains("\\u0001") && out.contains("\\n"), "{out}");
        let out = s(|o| write_str_bytes(o, b"ok\xffok"));
        assert_eq!(out, "\"ok\u{fffd}ok\"");
    }

    #[test]
    fn floats() {
        assert_eq!(s(|o| write_f32(o, 4.8, false)), "4.800000190734863");
        assert_eq!(s(|o| write_f32(o, 4.8, true)), "4.8");
        assert_eq!(s(|o| write_f32(o, f32::NAN, true)), "null");
        assert_eq!(s(|o| write_f64(o, f64::INFINITY)), "null");
        for x in [
            0.0f32,
            -0.0,
            1.0,
            1e-7,
            3.4e38,
            1e20,
            f32::MIN_POSITIVE,
            123_456.79,
        ] {
            let w = s(|o| write_f32(o, x, false));
            let back: f64 = w.parse().unwrap();
            assert_eq!(back.to_bits(), f64::from(x).to_bits(), "{w}");
            let t = s(|o| write_f32(o, x, true));
            let back: f32 = t.parse().unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{t}");
        }
    }

    #[test]
    fn timestamps() {
        let t = |us| s(|o| write_rfc3339(o, us));
        assert_eq!(t(0), "\"1970-01-01T00:00:00Z\"");
        assert_eq!(t(1_704_067_200_000_000), "\"2024-01-01T00:00:00Z\"");
        assert_eq!(t(1_704_067_200_500_000), "\"2024-01-01T00:00:00.500Z\"");
        assert_eq!(t(1_709_210_096_000_001), "\"2024-02-29T12:34:56.000001Z\"");
        assert_eq!(t(-1), "\"1969-12-31T23:59:59.999999Z\"");
        assert_eq!(t(951_782_400_000_000), "\"2000-02-29T00:00:00Z\"");
    }

    #[test]
    fn base64_and_ints() {
        assert_eq!(s(|o| write_base64(o, b"\x00\xffab")), "\"AP9hYg==\"");
        assert_eq!(s(|o| write_base64(o, b"")), "\"\"");
        assert_eq!(s(|o| write_i64(o, i64::MIN)), "-9223372036854775808");
    }
}
