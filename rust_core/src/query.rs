//! Batched lookups: resolve the requested features to views and slots (a plan), read the rows
//! of every view once per request, and expose each answer cell to the encoders.

use crate::catalog::{did_you_mean, Catalog, ViewDef};
use crate::error::{CoreError, Result};
use crate::hot::RowBytes;
use crate::invalid;
use crate::key::KeyColumn;
use crate::row::{RowView, ValueRef};
use crate::store::Store;
use crate::types::{DType, Status};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which features a request asks for.
#[derive(Debug, Clone)]
pub enum Selector {
    Service(String),
    Refs(Vec<String>),
}

/// Entity columns of a request, keyed by join-key name.
#[derive(Debug, Clone, Default)]
pub struct Entities {
    pub columns: Vec<(String, KeyColumn)>,
}

impl Entities {
    pub fn num_rows(&self) -> usize {
        self.columns.first().map_or(0, |c| c.1.len())
    }
}

#[derive(Debug, Clone)]
pub struct OutColumn {
    /// The feature's name as the request gave it: `view:feature`.
    pub reference: String,
    pub feature: String,
    /// Index into [`Plan::views`].
    pub view: usize,
    pub slot: usize,
    pub dtype: DType,
    pub dim: u32,
}

#[derive(Debug)]
pub struct PlanView {
    pub def: Arc<ViewDef>,
    /// For each join key of the view, the index of the entity column that carries it.
    pub key_columns: Vec<usize>,
}

#[derive(Debug)]
pub struct Plan {
    pub columns: Vec<OutColumn>,
    pub views: Vec<PlanView>,
}

/// Limits applied before any lookup happens.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entities: usize,
    pub max_features: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entities: 1000,
            max_features: 1000,
        }
    }
}

pub fn split_ref(r: &str) -> Result<(&str, &str)> {
    r.split_once(':')
        .filter(|(v, f)| !v.is_empty() && !f.is_empty())
        .ok_or_else(|| {
            invalid!("feature reference '{r}' is not of the form 'feature_view:feature'")
        })
}

/// Resolves the selector against the catalog and the entity columns the request carries.
pub fn plan(cat: &Catalog, sel: &Selector, entity_names: &[&str], limits: Limits) -> Result<Plan> {
    let refs: Vec<(usize, String, String)> = match sel {
        Selector::Service(name) => {
            let refs = cat.services.get(name).ok_or_else(|| {
                CoreError::NotFound(format!(
                    "unknown feature service '{name}'{}",
                    did_you_mean(name, cat.services.keys().map(String::as_str))
                ))
            })?;
            refs.iter()
                .map(|(vi, f)| (*vi, f.clone(), format!("{}:{f}", cat.views[*vi].name)))
                .collect()
        }
        Selector::Refs(refs) => {
            if refs.is_empty() {
                return Err(invalid!("no features requested"));
            }
            let mut out = Vec::with_capacity(refs.len());
            for r in refs {
                let (v, f) = split_ref(r)?;
                let vi = cat.view_index(v)?;
                if f == "*" {
                    for (name, _) in &cat.views[vi].features {
                        out.push((vi, name.clone(), format!("{v}:{name}")));
                    }
                } else {
                    out.push((vi, f.to_string(), r.clone()));
                }
            }
            out
        }
    };
    if refs.len() > limits.max_features {
        return Err(CoreError::InvalidArgument(format!(
            "{} features requested; the limit is {}",
            refs.len(),
            limits.max_features
        )));
    }
    let mut views: Vec<PlanView> = Vec::new();
    let mut view_pos: Vec<Option<usize>> = vec![None; cat.views.len()];
    let mut used_entity = vec![false; entity_names.len()];
    let mut columns = Vec::with_capacity(refs.len());
    for (vi, feature, reference) in refs {
        let def = &cat.views[vi];
        let slot = def.slot(&feature)?;
        let pv = if let Some(p) = view_pos[vi] {
            p
        } else {
            let mut key_columns = Vec::with_capacity(def.join_keys.len());
            for (jk, _) in &def.join_keys {
                let idx = entity_names.iter().position(|n| n == jk).ok_or_else(|| {
                    invalid!(
                        "missing join key '{jk}': feature view '{}' is keyed by [{}]",
                        def.name,
                        def.join_keys
                            .iter()
                            .map(|k| k.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                used_entity[idx] = true;
                key_columns.push(idx);
            }
            views.push(PlanView {
                def: def.clone(),
                key_columns,
            });
            view_pos[vi] = Some(views.len() - 1);
            views.len() - 1
        };
        let s = def.slot_spec(slot);
        columns.push(OutColumn {
            reference,
            feature,
            view: pv,
            slot,
            dtype: s.dtype,
            dim: s.dim,
        });
    }
    if let Some(i) = used_entity.iter().position(|u| !u) {
        return Err(invalid!(
            "entity column '{}' is not a join key of any requested feature view",
            entity_names[i]
        ));
    }
    Ok(Plan { columns, views })
}

/// The rows read for a request; cells are decoded on demand by the encoders.
pub struct Answer {
    pub num_entities: usize,
    /// Per plan view, per entity: the row, if one is stored and live.
    pub rows: Vec<Vec<Option<RowBytes>>>,
    /// Per plan view, per entity: the row is older than the view's TTL.
    pub expired: Vec<Vec<bool>>,
}

/// One answer cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell<'a> {
    pub status: Status,
    /// `ValueRef::Null` unless the status is PRESENT.
    pub value: ValueRef<'a>,
    /// Event timestamp of the row (us), 0 when there is none.
    pub event_ts: i64,
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Checks entity columns and reads every view's rows.
pub fn execute(
    store: &Store,
    plan: &Plan,
    entities: &Entities,
    limits: Limits,
    now_us: i64,
) -> Result<Answer> {
    let n = entities.num_rows();
    if n == 0 {
        return Err(invalid!("no entities given"));
    }
    for (name, col) in &entities.columns {
        if col.len() != n {
            return Err(invalid!(
                "entity columns have different lengths: '{}' has {n} values, '{name}' has {}",
                entities.columns[0].0,
                col.len()
            ));
        }
    }
    if n > limits.max_entities {
        return Err(CoreError::InvalidArgument(format!(
            "{n} entities requested; the limit is {}",
            limits.max_entities
        )));
    }
    let mut rows = Vec::with_capacity(plan.views.len());
    let mut expired = Vec::with_capacity(plan.views.len());
    for pv in &plan.views {
        let keys = encode_keys(&pv.def, &pv.key_columns, entities, n)?;
        let r = store.lookup(&pv.def, &keys)?;
        let ttl = pv.def.ttl_micros;
        expired.push(
            r.iter()
                .map(|row| {
                    ttl > 0
                        && row.as_ref().is_some_and(|b| {
                            RowView::new(b).is_some_and(|v| now_us - v.event_ts() > ttl)
                        })
                })
                .collect(),
        );
        rows.push(r);
    }
    Ok(Answer {
        num_entities: n,
        rows,
        expired,
    })
}

/// Hot-tier keys (view prefix + entity key) for every entity of a request.
pub fn encode_keys(
    def: &ViewDef,
    key_columns: &[usize],
    entities: &Entities,
    n: usize,
) -> Result<Vec<Vec<u8>>> {
    let prefix = def.hot_prefix();
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let mut k = Vec::with_capacity(4 + 8 * key_columns.len());
        k.extend_from_slice(&prefix);
        for (&c, (jk, ty)) in key_columns.iter().zip(&def.join_keys) {
            entities.columns[c].1.encode_into(i, *ty, jk, &mut k)?;
        }
        keys.push(k);
    }
    Ok(keys)
}

impl Answer {
    #[inline]
    pub fn cell<'a>(&'a self, plan: &'a Plan, col: usize, entity: usize) -> Cell<'a> {
        let c = &plan.columns[col];
        let pv = &plan.views[c.view];
        let none = |status| Cell {
            status,
            value: ValueRef::Null,
            event_ts: 0,
        };
        let Some(bytes) = &self.rows[c.view][entity] else {
            return none(Status::NotFound);
        };
        let Some(row) = RowView::new(bytes) else {
            return none(Status::NotFound);
        };
        let event_ts = row.event_ts();
        if self.expired[c.view][entity] {
            return Cell {
                status: Status::OutsideMaxAge,
                value: ValueRef::Null,
                event_ts,
            };
        }
        match row.value(&pv.def.layout, c.slot) {
            ValueRef::Missing => Cell {
                status: Status::NotFound,
                value: ValueRef::Null,
                event_ts,
            },
            ValueRef::Null => Cell {
                status: Status::NullValue,
                value: ValueRef::Null,
                event_ts,
            },
            v => Cell {
                status: Status::Present,
                value: v,
                event_ts,
            },
        }
    }

    /// Dense float32 fast path: value (NaN unless present) and status.
    #[inline]
    pub fn cell_f32(&self, plan: &Plan, col: usize, entity: usize) -> (f32, Status, i64) {
        let c = &plan.columns[col];
        let Some(bytes) = &self.rows[c.view][entity] else {
            return (f32::NAN, Status::NotFound, 0);
        };
        let Some(row) = RowView::new(bytes) else {
            return (f32::NAN, Status::NotFound, 0);
        };
        let ts = row.event_ts();
        if self.expired[c.view][entity] {
            return (f32::NAN, Status::OutsideMaxAge, ts);
        }
        let layout = &plan.views[c.view].def.layout;
        match row.value_f32(layout, c.slot) {
            Some(x) => (x, Status::Present, ts),
            None if c.slot < row.n_slots() && !row.is_present(c.slot) => {
                (f32::NAN, Status::NullValue, ts)
            }
            None => (f32::NAN, Status::NotFound, ts),
        }
    }
}
