//! Arrow in and out: write batches and entity columns arrive as Arrow record batches (through
//! the C data interface, see `py/arrow.rs`); answers leave as Arrow arrays.

use crate::catalog::ViewDef;
use crate::error::{CoreError, Result};
use crate::invalid;
use crate::key::KeyColumn;
use crate::query::{Answer, CellSource, Entities, OutColumn, Plan, RowState, Scalar};
use crate::row::{tombstone, BatchRowWriter, ReadRow, RowBytes, SlotPos, ValueRef};
use crate::types::{DType, KeyType, Status};
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, FixedSizeListBuilder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, StructArray,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use std::sync::Arc;

pub const EVENT_TS: &str = "event_timestamp";

/// Hot-tier keys and encoded rows of a write batch, index-aligned.
pub type KeysAndRows = (Vec<Vec<u8>>, Vec<Vec<u8>>);

fn column<'a>(batch: &'a StructArray, name: &str, what: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| invalid!("missing column '{name}' ({what})"))
}

fn expect_type(col: &ArrayRef, name: &str, want: &DataType) -> Result<()> {
    let ok = match (col.data_type(), want) {
        (
            DataType::Timestamp(TimeUnit::Microsecond, _),
            DataType::Timestamp(TimeUnit::Microsecond, _),
        ) => true,
        (a, b) => a == b,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid!(
            "column '{name}' has type {} but {want} is expected",
            col.data_type()
        ))
    }
}

fn first_null(col: &dyn Array) -> Option<usize> {
    (col.null_count() > 0).then(|| (0..col.len()).find(|&i| col.is_null(i)).unwrap_or(0))
}

/// A join-key column as a `KeyColumn` (copies; keys are small).
pub fn key_column(col: &ArrayRef, name: &str) -> Result<KeyColumn> {
    if let Some(i) = first_null(col.as_ref()) {
        return Err(invalid!("join key '{name}' is null at row {i}"));
    }
    Ok(match col.data_type() {
        DataType::Int64 => KeyColumn::Int64(col.as_primitive::<Int64Type>().values().to_vec()),
        DataType::Int32 => KeyColumn::Int32(col.as_primitive::<Int32Type>().values().to_vec()),
        DataType::Utf8 => KeyColumn::Str(
            col.as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect(),
        ),
        DataType::LargeUtf8 => KeyColumn::Str(
            col.as_string::<i64>()
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect(),
        ),
        DataType::Binary => KeyColumn::Bytes(
            col.as_binary::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default().to_vec())
                .collect(),
        ),
        DataType::LargeBinary => KeyColumn::Bytes(
            col.as_binary::<i64>()
                .iter()
                .map(|s| s.unwrap_or_default().to_vec())
                .collect(),
        ),
        other => {
            return Err(invalid!(
                "join key '{name}' has unsupported type {other} (int32, int64, string or binary)"
            ))
        }
    })
}

/// Every column of an entity batch, as request entities.
pub fn entities_from_batch(batch: &StructArray) -> Result<Entities> {
    let DataType::Struct(fields) = batch.data_type() else {
        return Err(invalid!("entities must be a record batch"));
    };
    let mut columns = Vec::with_capacity(fields.len());
    for (f, col) in fields.iter().zip(batch.columns()) {
        columns.push((f.name().clone(), key_column(col, f.name())?));
    }
    Ok(Entities::new(columns))
}

pub fn arrow_type(dtype: DType, dim: u32) -> DataType {
    match dtype {
        DType::Bool => DataType::Boolean,
        DType::Int32 => DataType::Int32,
        DType::Int64 => DataType::Int64,
        DType::Float32 => DataType::Float32,
        DType::Float64 => DataType::Float64,
        DType::String => DataType::Utf8,
        DType::Bytes => DataType::Binary,
        DType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DType::Float32Array => DataType::FixedSizeList(
            Arc::new(arrow::datatypes::Field::new(
                "item",
                DataType::Float32,
                true,
            )),
            dim as i32,
        ),
    }
}

/// Hot-tier keys of every row of a batch carrying the view's join-key columns.
pub fn keys_from_batch(view: &ViewDef, batch: &StructArray) -> Result<Vec<Vec<u8>>> {
    let n = batch.len();
    let mut cols = Vec::with_capacity(view.join_keys.len());
    for (name, ty) in &view.join_keys {
        let col = column(batch, name, "join key")?;
        let want = match ty {
            KeyType::Int32 => DataType::Int32,
            KeyType::Int64 => DataType::Int64,
            KeyType::String => DataType::Utf8,
            KeyType::Bytes => DataType::Binary,
        };
        expect_type(col, name, &want)?;
        cols.push(key_column(col, name)?);
    }
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let mut k = Vec::with_capacity(4 + 8 * cols.len());
        k.extend_from_slice(&view.hot_prefix());
        for (c, (name, ty)) in cols.iter().zip(&view.join_keys) {
            c.encode_into(i, *ty, name, &mut k)?;
        }
        keys.push(k);
    }
    Ok(keys)
}

fn event_timestamps(batch: &StructArray) -> Result<Vec<i64>> {
    let col = column(batch, EVENT_TS, "event time of each row")?;
    expect_type(
        col,
        EVENT_TS,
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    )?;
    if let Some(i) = first_null(col.as_ref()) {
        return Err(invalid!("column '{EVENT_TS}' is null at row {i}"));
    }
    Ok(col
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec())
}

/// Encodes a write batch: join keys, `event_timestamp`, and every live feature of the view.
pub fn rows_from_batch(view: &ViewDef, batch: &StructArray) -> Result<KeysAndRows> {
    let keys = keys_from_batch(view, batch)?;
    let ts = event_timestamps(batch)?;
    let mut w = BatchRowWriter::new(&view.layout, &ts);
    let mut live: Vec<Option<&str>> = vec![None; view.layout.len()];
    for (name, slot) in &view.features {
        live[*slot] = Some(name);
    }
    for (slot, spec) in view.layout.slots().iter().enumerate() {
        let Some(name) = live[slot] else {
            // A dropped slot: zero-filled, but var slots still need their end offset.
            if spec.dtype.is_var() {
                for i in 0..ts.len() {
                    w.set_var(i, slot, None);
                }
            }
            continue;
        };
        let col = column(batch, name, "feature")?;
        expect_type(col, name, &arrow_type(spec.dtype, spec.dim))?;
        if spec.dtype == DType::Float32Array {
            check_array_elements(col.as_ref(), name)?;
        }
        write_column(&mut w, slot, spec.dtype, spec.dim, col.as_ref());
    }
    Ok((keys, w.finish()))
}

/// An embedding is stored whole or null: a null element inside a present array would otherwise
/// be stored as 0.0, a silently wrong value.
fn check_array_elements(col: &dyn Array, name: &str) -> Result<()> {
    let a = col.as_fixed_size_list();
    if a.values().null_count() == 0 {
        return Ok(());
    }
    let d = a.value_length() as usize;
    for i in (0..a.len()).filter(|&i| a.is_valid(i)) {
        let start = a.value_offset(i) as usize;
        if let Some(j) = (start..start + d).find(|&j| a.values().is_null(j)) {
            return Err(invalid!(
                "column '{name}' row {i}: element {} of the array is null; an array feature is \
                 null as a whole or has every element",
                j - start
            ));
        }
    }
    Ok(())
}

fn write_column(w: &mut BatchRowWriter<'_>, slot: usize, dtype: DType, dim: u32, col: &dyn Array) {
    macro_rules! prim {
        ($t:ty) => {{
            let a = col.as_primitive::<$t>();
            for (i, v) in a.values().iter().enumerate() {
                if a.is_valid(i) {
                    w.set_fixed(i, slot, &v.to_le_bytes());
                }
            }
        }};
    }
    match dtype {
        DType::Bool => {
            let a = col.as_boolean();
            for i in 0..a.len() {
                if a.is_valid(i) {
                    w.set_fixed(i, slot, &[u8::from(a.value(i))]);
                }
            }
        }
        DType::Int32 => prim!(Int32Type),
        DType::Int64 => prim!(Int64Type),
        DType::Float32 => prim!(Float32Type),
        DType::Float64 => prim!(Float64Type),
        DType::Timestamp => prim!(TimestampMicrosecondType),
        DType::String => {
            let a = col.as_string::<i32>();
            for i in 0..a.len() {
                w.set_var(i, slot, a.is_valid(i).then(|| a.value(i).as_bytes()));
            }
        }
        DType::Bytes => {
            let a = col.as_binary::<i32>();
            for i in 0..a.len() {
                w.set_var(i, slot, a.is_valid(i).then(|| a.value(i)));
            }
        }
        DType::Float32Array => {
            let a = col.as_fixed_size_list();
            let child = a.values().as_primitive::<Float32Type>();
            let d = dim as usize;
            let mut buf = Vec::with_capacity(4 * d);
            for i in 0..a.len() {
                if a.is_valid(i) {
                    buf.clear();
                    let start = a.value_offset(i) as usize;
                    for x in &child.values()[start..start + d] {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                    w.set_fixed(i, slot, &buf);
                }
            }
        }
    }
}

/// Tombstones for every row of a batch of join keys and event timestamps.
pub fn tombstones_from_batch(view: &ViewDef, batch: &StructArray) -> Result<KeysAndRows> {
    let keys = keys_from_batch(view, batch)?;
    let ts = event_timestamps(batch)?;
    Ok((keys, ts.into_iter().map(tombstone).collect()))
}

/// One Arrow array per requested feature, entities in request order; nulls where not PRESENT.
pub fn answer_to_arrow(answer: &Answer, plan: &Plan) -> Result<Vec<ArrayRef>> {
    columns_to_arrow(answer, plan, &plan.columns)
}

/// One Arrow array per column of `plan`'s views (answered or not, such as an on-demand view's
/// inputs), entities in request order; nulls where not PRESENT.
pub fn columns_to_arrow(
    answer: &Answer,
    plan: &Plan,
    columns: &[OutColumn],
) -> Result<Vec<ArrayRef>> {
    let cells = answer.cells(plan);
    let cols: Vec<_> = columns
        .iter()
        .map(|c| (cells.col_for(c), c.dtype, c.dim))
        .collect();
    Ok(cells_to_arrow(&cells, &cols))
}

/// One Arrow array per column of `cells` (a source's column handle, its type and width),
/// entities in order; nulls where not PRESENT. A router's gathered answer is such a source
/// as much as a node's.
pub fn cells_to_arrow<S: CellSource>(cells: &S, columns: &[(S::Col, DType, u32)]) -> Vec<ArrayRef> {
    let n = cells.num_entities();
    let mut out: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for &(cp, dtype, dim) in columns {
        macro_rules! build {
            ($builder:expr, $pat:pat => $val:expr) => {{
                let mut b = $builder;
                for e in 0..n {
                    match cells.cell(cp, e).value {
                        $pat => b.append_value($val),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        let arr = match dtype {
            DType::Bool => build!(BooleanBuilder::with_capacity(n), ValueRef::Bool(x) => x),
            DType::Int32 => build!(Int32Builder::with_capacity(n), ValueRef::Int32(x) => x),
            DType::Int64 => build!(Int64Builder::with_capacity(n), ValueRef::Int64(x) => x),
            DType::Float32 => build!(Float32Builder::with_capacity(n), ValueRef::Float32(x) => x),
            DType::Float64 => build!(Float64Builder::with_capacity(n), ValueRef::Float64(x) => x),
            DType::Timestamp => build!(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"),
                ValueRef::Timestamp(x) => x
            ),
            DType::String => build!(
                StringBuilder::with_capacity(n, 16 * n),
                ValueRef::Str(x) => String::from_utf8_lossy(x)
            ),
            DType::Bytes => {
                build!(BinaryBuilder::with_capacity(n, 16 * n), ValueRef::Bytes(x) => x)
            }
            DType::Float32Array => {
                let d = dim as usize;
                let mut b = FixedSizeListBuilder::with_capacity(
                    Float32Builder::with_capacity(n * d),
                    dim as i32,
                    n,
                );
                for e in 0..n {
                    if let ValueRef::Float32Array(bytes) = cells.cell(cp, e).value {
                        for ch in bytes.chunks_exact(4) {
                            b.values()
                                .append_value(f32::from_le_bytes(ch.try_into().unwrap()));
                        }
                        b.append(true);
                    } else {
                        for _ in 0..d {
                            b.values().append_null();
                        }
                        b.append(false);
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }
        };
        out.push(arr);
    }
    out
}

/// Statuses (u8, Feast's numbers) and event timestamps (i64 us), row-major `[entity][feature]`.
pub fn status_and_ts(answer: &Answer, plan: &Plan) -> (Vec<u8>, Vec<i64>) {
    let (n, f) = (answer.num_entities, plan.columns.len());
    let mut st = vec![0u8; n * f];
    let mut ts = vec![0i64; n * f];
    let cells = answer.cells(plan);
    let cols: Vec<_> = (0..f).map(|c| cells.col(c)).collect();
    for e in 0..n {
        for (c, cp) in cols.iter().enumerate() {
            let cell = cells.cell(*cp, e);
            st[e * f + c] = cell.status as u8;
            ts[e * f + c] = cell.event_ts;
        }
    }
    (st, ts)
}

/// Dense float32 matrix `[entity][feature]` as little-endian bytes (NaN where not PRESENT),
/// and the statuses, row-major.
pub fn dense_f32(answer: &Answer, plan: &Plan) -> Result<(Vec<u8>, Vec<u8>)> {
    if let Some(c) = plan.columns.iter().find(|c| !c.dtype.is_dense_compatible()) {
        return Err(CoreError::InvalidArgument(format!(
            "feature '{}' has type {} and cannot be served in the dense float32 layout",
            c.reference,
            c.dtype.name()
        )));
    }
    let (n, f) = (answer.num_entities, plan.columns.len());
    let cells = answer.cells(plan);
    let cols: Vec<_> = (0..f).map(|c| cells.col(c)).collect();
    let mut vals = vec![0u8; 4 * n * f];
    let mut st = vec![0u8; n * f];
    // The common case, float32 features of full-width rows of one view: one bounds check per
    // row, then a bit test and a 4-byte copy per value (measured: 2x faster than the general
    // path below).
    let f32_slots: Option<Vec<SlotPos>> = (plan.views.len() == 1)
        .then(|| {
            let layout = &plan.views[0].def.layout;
            plan.columns
                .iter()
                .map(|c| (c.dtype == DType::Float32).then(|| layout.slot_pos(c.slot)))
                .collect()
        })
        .flatten();
    let end = f32_slots
        .iter()
        .flatten()
        .map(SlotPos::end)
        .max()
        .unwrap_or(0);
    // The straight gather: answer columns whose slots lie back to back in a full-width row
    // form runs (W2: one run of 200 slots, 800 bytes), copied as they are from each row
    // whose requested slots are all present (one bitmap test per row) instead of a bit test
    // and a 4-byte copy per value. Stored floats are little-endian, as the answer is.
    let gather = f32_slots.as_deref().map(|at| {
        let layout = &plan.views[0].def.layout;
        let mask = layout.presence_mask(plan.columns.iter().map(|c| c.slot));
        (gather_runs(at), mask, layout.len())
    });
    let present = vec![Status::Present as u8; f];
    for e in 0..n {
        let (vrow, srow) = (
            &mut vals[4 * e * f..4 * (e + 1) * f],
            &mut st[e * f..(e + 1) * f],
        );
        if let (Some(at), Some((runs, mask, n_layout)), RowState::Live(row)) =
            (&f32_slots, &gather, cells.row(0, e))
        {
            if let Some(b) = row.view().full_and_present(mask, *n_layout, end) {
                for &(c, len, pos) in runs {
                    vrow[4 * c..4 * (c + len)].copy_from_slice(&b[pos..pos + 4 * len]);
                }
                srow.copy_from_slice(&present);
                continue;
            }
            let done = row.view().f32_slots(at, end, |c, v| {
                let (bytes, status) = match v {
                    Some(b) => (b, Status::Present),
                    None => (&NAN_BYTES[..], Status::NullValue),
                };
                vrow[4 * c..4 * c + 4].copy_from_slice(bytes);
                srow[c] = status as u8;
            });
            if done {
                continue;
            }
        }
        for (c, cp) in cols.iter().enumerate() {
            let (v, s, _) = cells.f32(*cp, e);
            vrow[4 * c..4 * c + 4].copy_from_slice(&v.to_le_bytes());
            srow[c] = s as u8;
        }
    }
    Ok((vals, st))
}

const NAN_BYTES: [u8; 4] = f32::NAN.to_le_bytes();

/// Runs of answer columns whose float32 slots lie back to back in a full-width row: (first
/// column, columns, byte position of the first slot).
fn gather_runs(at: &[SlotPos]) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (c, a) in at.iter().enumerate() {
        match runs.last_mut() {
            Some(r) if r.2 + 4 * r.1 == a.pos() => r.1 += 1,
            _ => runs.push((c, 1, a.pos())),
        }
    }
    runs
}

/// The rows of a request-time on-demand view made from its transform's output for `n`
/// entities: one column per output feature, of the feature's Arrow type (checked, naming the
/// column), `n` rows. A null output is stored absent, so it is answered `NULL_VALUE`; the rows
/// have no event time (0, as Feast answers on-demand features).
pub fn on_demand_rows(view: &ViewDef, batch: &StructArray, n: usize) -> Result<Vec<RowState>> {
    let what = |msg: String| {
        CoreError::Transform(format!(
            "on-demand feature view '{}': the transform's output {msg}",
            view.name
        ))
    };
    if batch.len() != n {
        return Err(what(format!(
            "has {} rows; the request has {n} entities (one output row per entity, in order)",
            batch.len()
        )));
    }
    let ts = vec![0_i64; n];
    let mut w = BatchRowWriter::new(&view.layout, &ts);
    for (name, slot) in &view.features {
        let spec = view.layout.slots()[*slot];
        let col = batch
            .column_by_name(name)
            .ok_or_else(|| what(format!("has no column '{name}'")))?;
        let want = arrow_type(spec.dtype, spec.dim);
        expect_type(col, name, &want).map_err(|_| {
            what(format!(
                "column '{name}' has type {} but the registry declares {} (Arrow {})",
                col.data_type().to_string().to_lowercase(),
                spec.dtype.name(),
                want.to_string().to_lowercase()
            ))
        })?;
        if spec.dtype == DType::Float32Array {
            check_array_elements(col.as_ref(), name).map_err(|e| what(e.to_string()))?;
        }
        write_column(&mut w, *slot, spec.dtype, spec.dim, col.as_ref());
    }
    Ok(w.finish()
        .into_iter()
        .map(|r| ReadRow::live(RowBytes::from(r)).map_or(RowState::NotFound, RowState::Live))
        .collect())
}

/// A request field of an on-demand view as an Arrow array of its declared type, from the
/// request's column of that name (entity columns of integers or strings, or request-data
/// columns); a value that does not convert is an error naming the field and the value.
pub fn request_column(ents: &Entities, name: &str, dtype: DType, view: &str) -> Result<ArrayRef> {
    let bad = |i: usize, what: String| {
        invalid!(
            "request field '{name}' of on-demand feature view '{view}' is {}: value #{i} is \
             {what}",
            dtype.name()
        )
    };
    if let Some((_, col)) = ents.columns.iter().find(|(n, _)| n == name) {
        let ints: Option<Vec<i64>> = match col {
            KeyColumn::Int64(v) => Some(v.clone()),
            KeyColumn::Int32(v) => Some(v.iter().map(|&x| i64::from(x)).collect()),
            _ => None,
        };
        #[allow(clippy::cast_precision_loss)]
        return match (dtype, ints, col) {
            (DType::Int64, Some(v), _) => Ok(Arc::new(arrow::array::Int64Array::from(v))),
            (DType::Int32, Some(v), _) => {
                let mut out = Vec::with_capacity(v.len());
                for (i, x) in v.into_iter().enumerate() {
                    out.push(
                        i32::try_from(x).map_err(|_| {
                            bad(i, format!("the integer {x}, out of range for int32"))
                        })?,
                    );
                }
                Ok(Arc::new(arrow::array::Int32Array::from(out)))
            }
            (DType::Float64, Some(v), _) => Ok(Arc::new(arrow::array::Float64Array::from(
                v.into_iter().map(|x| x as f64).collect::<Vec<_>>(),
            ))),
            (DType::Float32, Some(v), _) => Ok(Arc::new(arrow::array::Float32Array::from(
                v.into_iter().map(|x| x as f32).collect::<Vec<_>>(),
            ))),
            (DType::String, _, KeyColumn::Str(v)) => {
                Ok(Arc::new(arrow::array::StringArray::from(v.clone())))
            }
            (_, _, col) => Err(bad(0, format!("{} ({})", col.display(0), col.type_name()))),
        };
    }
    let Some((_, col)) = ents.values.iter().find(|(n, _)| n == name) else {
        return Err(invalid!(
            "missing request field '{name}' ({}) of on-demand feature view '{view}': give it \
             beside the join keys, one value per entity",
            dtype.name()
        ));
    };
    let vals = &col.values;
    let describe = |v: &Scalar| match v {
        Scalar::Null => "null".to_string(),
        Scalar::Bool(b) => format!("the boolean {b}"),
        Scalar::Int(x) => format!("the integer {x}"),
        Scalar::Float(x) => format!("the number {x}"),
        Scalar::Str(s) => format!("the string {s:?}"),
        Scalar::Other(w) => (*w).to_string(),
    };
    macro_rules! build {
        ($builder:expr, $($pat:pat $(if $guard:expr)? => $val:expr),+) => {{
            let mut b = $builder;
            for (i, v) in vals.iter().enumerate() {
                match v {
                    Scalar::Null => b.append_null(),
                    $($pat $(if $guard)? => b.append_value($val),)+
                    other => return Err(bad(i, describe(other))),
                }
            }
            Ok(Arc::new(b.finish()) as ArrayRef)
        }};
    }
    let n = vals.len();
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    match dtype {
        DType::Float64 => build!(Float64Builder::with_capacity(n),
            Scalar::Float(x) => *x, Scalar::Int(x) => *x as f64),
        DType::Float32 => build!(Float32Builder::with_capacity(n),
            Scalar::Float(x) => *x as f32, Scalar::Int(x) => *x as f32),
        DType::Int64 => build!(Int64Builder::with_capacity(n), Scalar::Int(x) => *x),
        DType::Int32 => build!(Int32Builder::with_capacity(n),
            Scalar::Int(x) if i32::try_from(*x).is_ok() => *x as i32),
        DType::Bool => build!(BooleanBuilder::with_capacity(n), Scalar::Bool(x) => *x),
        DType::String => build!(StringBuilder::with_capacity(n, 16 * n), Scalar::Str(x) => x),
        other => Err(invalid!(
            "request field '{name}' of on-demand feature view '{view}' has type {}, which \
             request data cannot carry",
            other.name()
        )),
    }
}

/// The join keys and event times of encoded rows (hot-tier keys and rows or tombstones, as a
/// decoded Kafka batch holds them), as Arrow columns named after the view's join keys and
/// `event_timestamp`: what a write-time on-demand view derives from.
pub fn entities_of_rows(
    view: &ViewDef,
    keys: &[Vec<u8>],
    rows: &[Vec<u8>],
) -> Result<(Vec<String>, Vec<ArrayRef>)> {
    use crate::key::{decode_key, KeyValue};
    let types: Vec<KeyType> = view.join_keys.iter().map(|k| k.1).collect();
    let n = keys.len();
    let mut cols: Vec<Vec<KeyValue>> = (0..types.len()).map(|_| Vec::with_capacity(n)).collect();
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    for (k, r) in keys.iter().zip(rows) {
        let vals = decode_key(k.get(4..).unwrap_or_default(), &types).ok_or_else(|| {
            CoreError::Storage(format!(
                "view '{}': an entity key does not decode",
                view.name
            ))
        })?;
        for (c, v) in cols.iter_mut().zip(vals) {
            c.push(v);
        }
        ts.append_value(crate::row::RowView::new(r).map_or(0, |v| v.event_ts()));
    }
    let mut names = Vec::with_capacity(types.len() + 1);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(types.len() + 1);
    for ((name, ty), col) in view.join_keys.iter().zip(cols) {
        names.push(name.clone());
        arrays.push(match ty {
            KeyType::Int64 => Arc::new(arrow::array::Int64Array::from_iter_values(
                col.into_iter()
                    .map(|v| if let KeyValue::Int64(x) = v { x } else { 0 }),
            )),
            KeyType::Int32 => Arc::new(arrow::array::Int32Array::from_iter_values(
                col.into_iter()
                    .map(|v| if let KeyValue::Int32(x) = v { x } else { 0 }),
            )),
            KeyType::String => Arc::new(arrow::array::StringArray::from_iter_values(
                col.into_iter().map(|v| {
                    if let KeyValue::Str(x) = v {
                        x
                    } else {
                        String::new()
                    }
                }),
            )),
            KeyType::Bytes => Arc::new(arrow::array::BinaryArray::from_iter_values(
                col.into_iter().map(|v| {
                    if let KeyValue::Bytes(x) = v {
                        x
                    } else {
                        Vec::new()
                    }
                }),
            )),
        });
    }
    names.push(EVENT_TS.to_string());
    arrays.push(Arc::new(ts.finish()));
    Ok((names, arrays))
}
