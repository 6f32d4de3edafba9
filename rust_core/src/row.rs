//! Row codec: one stored row per entity and feature view.
//!
//! ```text
//! header (12 bytes): version u8 | flags u8 (bit 0: tombstone) | n_slots u16 LE | event_ts i64 LE (us)
//! presence bitmap:   ceil(n_slots / 8) bytes, bit set = value present (clear = null)
//! fixed area:        each slot's fixed-width value, little-endian, nulls zero-filled;
//!                    string / bytes slots hold the u32 end offset of their bytes in the var area
//! var area:          string / bytes values, concatenated in slot order
//! ```
//! No feature names are stored: a row's slots follow the view's physical schema, which only
//! ever grows (new features are appended; dropped ones keep their slot). A row written before a
//! feature was added has fewer slots and answers that feature as missing.

use crate::types::DType;
use std::cmp::Ordering;
use std::sync::Arc;

/// A stored row, shared between the hot tier and in-flight answers. Empty = known absent.
pub type RowBytes = Arc<[u8]>;

pub const HEADER_LEN: usize = 12;
pub const VERSION: u8 = 1;
pub const FLAG_TOMBSTONE: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub dtype: DType,
    pub dim: u32,
}

/// Precomputed offsets for the slots of a view's physical schema.
#[derive(Debug, Clone)]
pub struct RowLayout {
    slots: Vec<Slot>,
    /// `fixed_off[i]`: offset of slot i inside the fixed area; `fixed_off[n]`: fixed area size.
    fixed_off: Vec<u32>,
    /// For a var slot: the previous var slot, whose end offset is this one's start.
    prev_var: Vec<Option<u32>>,
}

impl RowLayout {
    pub fn new(slots: Vec<Slot>) -> Self {
        let mut fixed_off = Vec::with_capacity(slots.len() + 1);
        let mut prev_var = Vec::with_capacity(slots.len());
        let (mut off, mut last_var) = (0u32, None);
        for (i, s) in slots.iter().enumerate() {
            fixed_off.push(off);
            off += s.dtype.fixed_width(s.dim);
            prev_var.push(last_var);
            if s.dtype.is_var() {
                last_var = Some(i as u32);
            }
        }
        fixed_off.push(off);
        Self {
            slots,
            fixed_off,
            prev_var,
        }
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn bitmap_len(n: usize) -> usize {
        n.div_ceil(8)
    }

    /// Length of header + bitmap + fixed area of a row with all current slots.
    pub fn fixed_row_len(&self) -> usize {
        let n = self.slots.len();
        HEADER_LEN + Self::bitmap_len(n) + self.fixed_off[n] as usize
    }

    /// Start of slot `slot`'s fixed bytes in a full-width row.
    pub fn fixed_pos(&self, slot: usize) -> usize {
        HEADER_LEN + Self::bitmap_len(self.slots.len()) + self.fixed_off[slot] as usize
    }

    /// Where slot `slot` sits in a full-width row, for [`RowView::value_at`].
    pub fn slot_pos(&self, slot: usize) -> SlotPos {
        let s = self.slots[slot];
        SlotPos {
            slot,
            dtype: s.dtype,
            n_slots: self.slots.len(),
            bm: HEADER_LEN + slot / 8,
            mask: 1 << (slot % 8),
            pos: self.fixed_pos(slot),
            width: s.dtype.fixed_width(s.dim) as usize,
        }
    }

    /// Mask of `slots` in the presence bitmap of a full-width row, for
    /// [`RowView::count_present`].
    pub fn presence_mask(&self, slots: impl IntoIterator<Item = usize>) -> Vec<u8> {
        let mut mask = vec![0u8; Self::bitmap_len(self.slots.len())];
        for s in slots {
            mask[s / 8] |= 1 << (s % 8);
        }
        mask
    }
}

/// Where one slot of a layout sits in a row that has every slot of the layout (a full-width
/// row, the common case): computed once per answer column, so that reading a fixed-width value
/// of a full row is a bit test and a load.
#[derive(Debug, Clone, Copy)]
pub struct SlotPos {
    pub slot: usize,
    pub dtype: DType,
    /// Slots of the layout: a row with this many is full-width.
    n_slots: usize,
    /// Byte of the presence bitmap that holds the slot's bit, and the bit.
    bm: usize,
    mask: u8,
    /// Start of the slot's fixed bytes, and their count.
    pos: usize,
    width: usize,
}

/// Encodes a tombstone: deletes follow the same newer-wins rule as writes.
pub fn tombstone(event_ts: i64) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN);
    b.push(VERSION);
    b.push(FLAG_TOMBSTONE);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&event_ts.to_le_bytes());
    b
}

/// Writes many rows column by column (the natural order of Arrow input).
pub struct BatchRowWriter<'a> {
    layout: &'a RowLayout,
    fixed_len: usize,
    fixed: Vec<u8>,
    var: Vec<Vec<u8>>,
    has_var: bool,
}

impl<'a> BatchRowWriter<'a> {
    pub fn new(layout: &'a RowLayout, event_ts: &[i64]) -> Self {
        let n = event_ts.len();
        let fixed_len = layout.fixed_row_len();
        let mut fixed = vec![0u8; fixed_len * n];
        let n_slots = u16::try_from(layout.len()).expect("at most 65535 slots per view");
        for (i, ts) in event_ts.iter().enumerate() {
            let r = &mut fixed[i * fixed_len..];
            r[0] = VERSION;
            r[1] = 0;
            r[2..4].copy_from_slice(&n_slots.to_le_bytes());
            r[4..12].copy_from_slice(&ts.to_le_bytes());
        }
        let has_var = layout.slots.iter().any(|s| s.dtype.is_var());
        Self {
            layout,
            fixed_len,
            fixed,
            var: if has_var {
                vec![Vec::new(); n]
            } else {
                Vec::new()
            },
            has_var,
        }
    }

    pub fn num_rows(&self) -> usize {
        self.fixed.len() / self.fixed_len.max(1)
    }

    #[inline]
    fn mark_present(&mut self, row: usize, slot: usize) {
        self.fixed[row * self.fixed_len + HEADER_LEN + slot / 8] |= 1 << (slot % 8);
    }

    /// Sets the fixed-width value of `slot` in `row` (little-endian bytes of the right width).
    #[inline]
    pub fn set_fixed(&mut self, row: usize, slot: usize, le_bytes: &[u8]) {
        let pos = row * self.fixed_len + self.layout.fixed_pos(slot);
        self.fixed[pos..pos + le_bytes.len()].copy_from_slice(le_bytes);
        self.mark_present(row, slot);
    }

    /// Appends a string / bytes value; var slots must be written in slot order for each row,
    /// nulls included (`None`).
    #[inline]
    pub fn set_var(&mut self, row: usize, slot: usize, value: Option<&[u8]>) {
        let var = &mut self.var[row];
        if let Some(v) = value {
            var.extend_from_slice(v);
        }
        let end = u32::try_from(var.len()).expect("row var area under 4 GiB");
        let pos = row * self.fixed_len + self.layout.fixed_pos(slot);
        self.fixed[pos..pos + 4].copy_from_slice(&end.to_le_bytes());
        if value.is_some() {
            self.mark_present(row, slot);
        }
    }

    pub fn finish(self) -> Vec<Vec<u8>> {
        let fl = self.fixed_len;
        if self.has_var {
            self.fixed
                .chunks_exact(fl)
                .zip(self.var)
                .map(|(f, v)| {
                    let mut r = Vec::with_capacity(f.len() + v.len());
                    r.extend_from_slice(f);
                    r.extend_from_slice(&v);
                    r
                })
                .collect()
        } else {
            self.fixed.chunks_exact(fl).map(<[u8]>::to_vec).collect()
        }
    }
}

/// A value read from a row, borrowing the row's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// The slot is absent from the row (written before the feature existed) or unreadable.
    Missing,
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    Str(&'a [u8]),
    Bytes(&'a [u8]),
    Timestamp(i64),
    /// Little-endian float32s.
    Float32Array(&'a [u8]),
}

/// Read access to one stored row.
#[derive(Clone, Copy)]
pub struct RowView<'a> {
    b: &'a [u8],
    n_slots: usize,
}

/// A stored row read for an answer, its header parsed once when read: the TTL check, every
/// cell and the serving counters of the request use this instead of parsing it again.
#[derive(Debug, Clone)]
pub struct ReadRow {
    bytes: RowBytes,
    n_slots: usize,
    event_ts: i64,
}

impl ReadRow {
    /// `None` for bytes that are no row of a known version (absent: empty) and for tombstones.
    #[inline]
    pub fn live(bytes: RowBytes) -> Option<Self> {
        let v = RowView::new(&bytes)?;
        if v.is_tombstone() {
            return None;
        }
        let (n_slots, event_ts) = (v.n_slots, v.event_ts());
        Some(Self {
            bytes,
            n_slots,
            event_ts,
        })
    }

    #[inline]
    pub fn event_ts(&self) -> i64 {
        self.event_ts
    }

    #[inline]
    pub fn view(&self) -> RowView<'_> {
        RowView {
            b: &self.bytes,
            n_slots: self.n_slots,
        }
    }
}

impl<'a> RowView<'a> {
    /// `None` for bytes that are not a row of a known version.
    pub fn new(b: &'a [u8]) -> Option<Self> {
        if b.len() < HEADER_LEN || b[0] != VERSION {
            return None;
        }
        let n_slots = u16::from_le_bytes([b[2], b[3]]) as usize;
        Some(Self { b, n_slots })
    }

    pub fn event_ts(&self) -> i64 {
        i64::from_le_bytes(self.b[4..12].try_into().expect("header checked"))
    }

    pub fn is_tombstone(&self) -> bool {
        self.b[1] & FLAG_TOMBSTONE != 0
    }

    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    #[inline]
    fn fixed_start(&self) -> usize {
        HEADER_LEN + self.n_slots.div_ceil(8)
    }

    #[inline]
    pub fn is_present(&self, slot: usize) -> bool {
        slot < self.n_slots
            && self
                .b
                .get(HEADER_LEN + slot / 8)
                .is_some_and(|byte| byte & (1 << (slot % 8)) != 0)
    }

    #[inline]
    fn fixed(&self, layout: &RowLayout, slot: usize, width: usize) -> Option<&'a [u8]> {
        let pos = self.fixed_start() + layout.fixed_off[slot] as usize;
        self.b.get(pos..pos + width)
    }

    fn var_bounds(&self, layout: &RowLayout, slot: usize) -> Option<(usize, usize)> {
        let var_start = self.fixed_start() + *layout.fixed_off.get(self.n_slots)? as usize;
        let end = u32::from_le_bytes(self.fixed(layout, slot, 4)?.try_into().ok()?) as usize;
        let start = match layout.prev_var[slot] {
            Some(p) => {
                u32::from_le_bytes(self.fixed(layout, p as usize, 4)?.try_into().ok()?) as usize
            }
            None => 0,
        };
        (start <= end).then_some((var_start + start, var_start + end))
    }

    /// Reads slot `slot` as laid out by `layout` (the view's current physical schema, of which
    /// the row's slots are a prefix).
    #[inline]
    pub fn value(&self, layout: &RowLayout, slot: usize) -> ValueRef<'a> {
        if slot >= self.n_slots || slot >= layout.len() {
            return ValueRef::Missing;
        }
        if !self.is_present(slot) {
            return ValueRef::Null;
        }
        let s = layout.slots[slot];
        let v = match s.dtype {
            DType::Bool => self
                .fixed(layout, slot, 1)
                .map(|b| ValueRef::Bool(b[0] != 0)),
            DType::Int32 => self
                .fixed(layout, slot, 4)
                .map(|b| ValueRef::Int32(i32::from_le_bytes(b.try_into().unwrap()))),
            DType::Float32 => self
                .fixed(layout, slot, 4)
                .map(|b| ValueRef::Float32(f32::from_le_bytes(b.try_into().unwrap()))),
            DType::Int64 => self
                .fixed(layout, slot, 8)
                .map(|b| ValueRef::Int64(i64::from_le_bytes(b.try_into().unwrap()))),
            DType::Float64 => self
                .fixed(layout, slot, 8)
                .map(|b| ValueRef::Float64(f64::from_le_bytes(b.try_into().unwrap()))),
            DType::Timestamp => self
                .fixed(layout, slot, 8)
                .map(|b| ValueRef::Timestamp(i64::from_le_bytes(b.try_into().unwrap()))),
            DType::Float32Array => self
                .fixed(layout, slot, 4 * s.dim as usize)
                .map(ValueRef::Float32Array),
            DType::String | DType::Bytes => self
                .var_bounds(layout, slot)
                .and_then(|(a, z)| self.b.get(a..z))
                .map(|b| {
                    if s.dtype == DType::String {
                        ValueRef::Str(b)
                    } else {
                        ValueRef::Bytes(b)
                    }
                }),
        };
        v.unwrap_or(ValueRef::Missing)
    }

    /// [`Self::value`] of slot `at.slot`, read straight from its bytes when the row is
    /// full-width and the slot fixed-width (a row too short for its bitmap is corrupt: the
    /// general path answers it safely).
    #[inline]
    pub fn value_at(&self, layout: &RowLayout, at: SlotPos) -> ValueRef<'a> {
        match self.fixed_at(at) {
            Some(v) => v,
            None => self.value_general(layout, at.slot),
        }
    }

    /// The fast path of [`Self::value_at`]: `None` when it does not apply.
    #[inline]
    pub fn fixed_at(&self, at: SlotPos) -> Option<ValueRef<'a>> {
        if self.n_slots != at.n_slots {
            return None;
        }
        let bits = *self.b.get(at.bm)?;
        if bits & at.mask == 0 {
            return Some(ValueRef::Null);
        }
        let fixed = |w: usize| self.b.get(at.pos..at.pos + w);
        match at.dtype {
            DType::Float32 => {
                fixed(4).map(|b| ValueRef::Float32(f32::from_le_bytes(b.try_into().expect("4"))))
            }
            DType::Float64 => {
                fixed(8).map(|b| ValueRef::Float64(f64::from_le_bytes(b.try_into().expect("8"))))
            }
            DType::Int32 => {
                fixed(4).map(|b| ValueRef::Int32(i32::from_le_bytes(b.try_into().expect("4"))))
            }
            DType::Int64 => {
                fixed(8).map(|b| ValueRef::Int64(i64::from_le_bytes(b.try_into().expect("8"))))
            }
            DType::Timestamp => {
                fixed(8).map(|b| ValueRef::Timestamp(i64::from_le_bytes(b.try_into().expect("8"))))
            }
            DType::Bool => fixed(1).map(|b| ValueRef::Bool(b[0] != 0)),
            DType::Float32Array => fixed(at.width).map(ValueRef::Float32Array),
            DType::String | DType::Bytes => None,
        }
    }

    /// Kept out of line so that the fast path inlines into the encoders' loops small.
    #[inline(never)]
    fn value_general(&self, layout: &RowLayout, slot: usize) -> ValueRef<'a> {
        self.value(layout, slot)
    }

    /// Dense float32 fast path for one float32 slot of a full-width row: `Some(Some(x))`
    /// present, `Some(None)` null, `None` when the fast path does not apply.
    #[inline]
    pub fn f32_at(&self, at: SlotPos) -> Option<Option<f32>> {
        if at.dtype != DType::Float32 || self.n_slots != at.n_slots {
            return None;
        }
        if *self.b.get(at.bm)? & at.mask == 0 {
            return Some(None);
        }
        let b = self.b.get(at.pos..at.pos + 4)?;
        Some(Some(f32::from_le_bytes(b.try_into().expect("4"))))
    }

    /// Dense float32 fast path over float32 slots of one full-width row: `f(i, bytes)` for
    /// each `at[i]`, with its 4 little-endian bytes or `None` when null. One bounds check for
    /// the row (`end`: the largest `pos + 4` of `at`, from [`SlotPos::end`]). Returns false,
    /// having read nothing, when the row is not full-width or too short.
    #[inline]
    pub fn f32_slots(
        &self,
        at: &[SlotPos],
        end: usize,
        mut f: impl FnMut(usize, Option<&'a [u8]>),
    ) -> bool {
        let full = at.first().is_none_or(|a| a.n_slots == self.n_slots);
        if !full || self.b.len() < end {
            return false;
        }
        for (i, a) in at.iter().enumerate() {
            debug_assert_eq!(a.dtype, DType::Float32);
            if self.b[a.bm] & a.mask == 0 {
                f(i, None);
            } else {
                f(i, Some(&self.b[a.pos..a.pos + 4]));
            }
        }
        true
    }

    /// The row's bytes when it is full-width for a layout of `n_layout` slots, at least `end`
    /// bytes long, and every slot of `mask` ([`RowLayout::presence_mask`]) is present: then
    /// each of those slots' fixed bytes sit at their [`SlotPos`], to be copied as they are
    /// (the dense gather; `None`: read slot by slot).
    #[inline]
    pub fn full_and_present(&self, mask: &[u8], n_layout: usize, end: usize) -> Option<&'a [u8]> {
        if self.n_slots != n_layout || self.b.len() < end {
            return None;
        }
        let bits = self.b.get(HEADER_LEN..HEADER_LEN + mask.len())?;
        mask.iter()
            .zip(bits)
            .all(|(m, b)| m & b == *m)
            .then_some(self.b)
    }

    /// How many of the slots in `mask` (from [`RowLayout::presence_mask`] of a layout of
    /// `n_layout` slots) are present, when this row is full-width; `None` otherwise.
    #[inline]
    pub fn count_present(&self, mask: &[u8], n_layout: usize) -> Option<u64> {
        if self.n_slots != n_layout {
            return None;
        }
        let bits = self.b.get(HEADER_LEN..HEADER_LEN + mask.len())?;
        Some(
            mask.iter()
                .zip(bits)
                .map(|(m, b)| u64::from((m & b).count_ones()))
                .sum(),
        )
    }
}

impl SlotPos {
    /// End of the slot's fixed bytes in a full-width row.
    pub fn end(&self) -> usize {
        self.pos + self.width
    }

    /// Start of the slot's fixed bytes in a full-width row.
    pub fn pos(&self) -> usize {
        self.pos
    }
}

/// The merge rule: does `new` replace `old`? A row replaces another only if its event timestamp
/// is newer; on equal timestamps the greater byte string wins, so any order of the same writes
/// converges to the same state (and a tombstone beats a row of the same timestamp).
pub fn supersedes(new: &[u8], old: &[u8]) -> bool {
    let ts = |b: &[u8]| {
        b.get(4..12)
            .map_or(i64::MIN, |t| i64::from_le_bytes(t.try_into().unwrap()))
    };
    match ts(new).cmp(&ts(old)) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => new > old,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum V {
        Null,
        B(bool),
        I32(i32),
        I64(i64),
        F32(f32),
        F64(f64),
        S(String),
        Y(Vec<u8>),
        T(i64),
        A(Vec<f32>),
    }

    fn slot_of(v: &V) -> Slot {
        let (dtype, dim) = match v {
            V::Null | V::S(_) => (DType::String, 0),
            V::B(_) => (DType::Bool, 0),
            V::I32(_) => (DType::Int32, 0),
            V::I64(_) => (DType::Int64, 0),
            V::F32(_) => (DType::Float32, 0),
            V::F64(_) => (DType::Float64, 0),
            V::Y(_) => (DType::Bytes, 0),
            V::T(_) => (DType::Timestamp, 0),
            V::A(a) => (DType::Float32Array, a.len() as u32),
        };
        Slot { dtype, dim }
    }

    fn arb_value() -> impl Strategy<Value = V> {
        prop_oneof![
            Just(V::Null),
            any::<bool>().prop_map(V::B),
            any::<i32>().prop_map(V::I32),
            any::<i64>().prop_map(V::I64),
            any::<f32>().prop_map(V::F32),
            any::<f64>().prop_map(V::F64),
            ".{0,20}".prop_map(V::S),
            proptest::collection::vec(any::<u8>(), 0..30).prop_map(V::Y),
            any::<i64>().prop_map(V::T),
            proptest::collection::vec(any::<f32>(), 1..6).prop_map(V::A),
        ]
    }

    fn encode(values: &[V], ts: i64) -> (RowLayout, Vec<u8>) {
        let layout = RowLayout::new(values.iter().map(slot_of).collect());
        let mut w = BatchRowWriter::new(&layout, &[ts]);
        for (slot, v) in values.iter().enumerate() {
            match v {
                V::Null => w.set_var(0, slot, None),
                V::B(b) => w.set_fixed(0, slot, &[u8::from(*b)]),
                V::I32(x) => w.set_fixed(0, slot, &x.to_le_bytes()),
                V::I64(x) | V::T(x) => w.set_fixed(0, slot, &x.to_le_bytes()),
                V::F32(x) => w.set_fixed(0, slot, &x.to_le_bytes()),
                V::F64(x) => w.set_fixed(0, slot, &x.to_le_bytes()),
                V::S(s) => w.set_var(0, slot, Some(s.as_bytes())),
                V::Y(y) => w.set_var(0, slot, Some(y)),
                V::A(a) => {
                    let b: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
                    w.set_fixed(0, slot, &b);
                }
            }
        }
        (layout.clone(), w.finish().pop().unwrap())
    }

    fn check(values: &[V], layout: &RowLayout, row: &[u8]) -> Result<(), TestCaseError> {
        let r = RowView::new(row).unwrap();
        for (slot, v) in values.iter().enumerate() {
            let got = r.value(layout, slot);
            match (v, got) {
                (V::Null, ValueRef::Null) => {}
                (V::B(a), ValueRef::Bool(b)) => prop_assert_eq!(*a, b),
                (V::I32(a), ValueRef::Int32(b)) => prop_assert_eq!(*a, b),
                (V::I64(a), ValueRef::Int64(b)) | (V::T(a), ValueRef::Timestamp(b)) => {
                    prop_assert_eq!(*a, b);
                }
                (V::F32(a), ValueRef::Float32(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                (V::F64(a), ValueRef::Float64(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                (V::S(a), ValueRef::Str(b)) => prop_assert_eq!(a.as_bytes(), b),
                (V::Y(a), ValueRef::Bytes(b)) => prop_assert_eq!(a.as_slice(), b),
                (V::A(a), ValueRef::Float32Array(b)) => {
                    let a: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
                    prop_assert_eq!(a.as_slice(), b);
                }
                (v, got) => prop_assert!(false, "slot {slot}: wrote {v:?}, read {got:?}"),
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn round_trip_every_type(values in proptest::collection::vec(arb_value(), 0..40), ts in any::<i64>()) {
            let (layout, row) = encode(&values, ts);
            let r = RowView::new(&row).unwrap();
            prop_assert_eq!(r.event_ts(), ts);
            prop_assert!(!r.is_tombstone());
            check(&values, &layout, &row)?;
        }

        /// A row written under an older, shorter schema reads correctly under the grown one,
        /// and answers the new slots as missing.
        #[test]
        fn old_rows_read_under_grown_schema(values in proptest::collection::vec(arb_value(), 0..20), extra in proptest::collection::vec(arb_value(), 1..5)) {
            let (_, row) = encode(&values, 1);
            let all: Vec<V> = values.iter().chain(&extra).cloned().collect();
            let grown = RowLayout::new(all.iter().map(slot_of).collect());
            check(&values, &grown, &row)?;
            let r = RowView::new(&row).unwrap();
            for slot in values.len()..all.len() {
                prop_assert_eq!(r.value(&grown, slot), ValueRef::Missing);
            }
        }

        /// The merge rule is a total order: applying any permutation of writes converges.
        #[test]
        fn merge_converges(rows in proptest::collection::vec((0i64..4, proptest::collection::vec(any::<u8>(), 0..3), any::<bool>()), 1..8)) {
            let encoded: Vec<Vec<u8>> = rows.iter().map(|(ts, tail, tomb)| {
                if *tomb { tombstone(*ts) } else {
                    let mut b = tombstone(*ts);
                    b[1] = 0;
                    b.extend_from_slice(tail);
                    b
                }
            }).collect();
            let apply = |order: &[usize]| {
                let mut cur: Option<&Vec<u8>> = None;
                for &i in order {
                    if cur.is_none_or(|c| supersedes(&encoded[i], c)) {
                        cur = Some(&encoded[i]);
                    }
                }
                cur.cloned()
            };
            let fwd: Vec<usize> = (0..encoded.len()).collect();
            let rev: Vec<usize> = fwd.iter().rev().copied().collect();
            let newest = apply(&fwd).unwrap();
            prop_assert_eq!(Some(newest.clone()), apply(&rev));
            let max_ts = rows.iter().map(|r| r.0).max().unwrap();
            prop_assert_eq!(RowView::new(&newest).unwrap().event_ts(), max_ts);
        }
    }

    #[test]
    fn older_write_loses_newer_wins_tie_is_stable() {
        let (_, a) = encode(&[V::F32(1.0)], 10);
        let (_, b) = encode(&[V::F32(2.0)], 20);
        assert!(supersedes(&b, &a));
        assert!(!supersedes(&a, &b));
        let (_, c) = encode(&[V::F32(3.0)], 20);
        assert!(supersedes(&c, &b) != supersedes(&b, &c));
        assert!(!supersedes(&b, &b), "rewriting the same row is a no-op");
        assert!(
            supersedes(&tombstone(20), &b),
            "a delete beats a row of the same time"
        );
        assert!(!supersedes(&tombstone(19), &b));
    }

    #[test]
    fn corrupt_rows_do_not_panic() {
        let (layout, row) = encode(&[V::S("hello".into()), V::I64(5)], 1);
        for cut in 0..row.len() {
            if let Some(r) = RowView::new(&row[..cut]) {
                let _ = r.value(&layout, 0);
                let _ = r.value(&layout, 1);
            }
        }
        assert!(
            RowView::new(&[9u8; 12]).is_none(),
            "unknown version is rejected"
        );
    }
}
