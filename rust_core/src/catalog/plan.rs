//! Planning: a request's feature references resolved against the catalog, once per request
//! shape. A plan names, per answer column, the view and slot to read, and per view the entity
//! columns that carry its join keys.
//!
//! Plans are cached in the [`Catalog`] they were made from, so a registry change (which swaps
//! the catalog) drops them; that is why planning sits beside the catalog, below the stores and
//! readers that use it.

use super::{did_you_mean, Catalog, ViewDef};
use crate::error::{CoreError, Result};
use crate::invalid;
use crate::types::DType;
use std::sync::Arc;

/// Which features a request asks for.
#[derive(Debug, Clone)]
pub enum Selector {
    Service(String),
    Refs(Vec<String>),
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
    /// The request-time on-demand views among [`Plan::views`], in plan-view order.
    pub on_demand: Vec<PlanOnDemand>,
}

/// A request-time on-demand view of a plan: where its inputs come from.
#[derive(Debug)]
pub struct PlanOnDemand {
    /// Index into [`Plan::views`] of the on-demand view (its rows are made from the
    /// transform's output).
    pub view: usize,
    /// The stored features it reads, as columns of the plan's other views (not answered
    /// unless also requested). `feature` is the column name the transform sees: the bare
    /// feature name, or `view__feature` where two sources share a name.
    pub inputs: Vec<OutColumn>,
    /// Fields that arrive with the request: name and type.
    pub request: Vec<(String, DType)>,
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

/// Plans kept per catalog; past this many distinct request shapes the cache starts over.
const PLAN_CACHE_ENTRIES: usize = 1024;

/// Plans a request against `cat`, memoised per catalog: model servers send the same few feature lists over and
/// over, and resolving 200 names costs about 30 us, as much as the lookup itself.
pub fn plan_cached(
    cat: &Catalog,
    sel: &Selector,
    entity_names: &[&str],
    limits: Limits,
) -> Result<Arc<Plan>> {
    let mut key = String::with_capacity(256);
    match sel {
        Selector::Service(s) => {
            key.push('S');
            key.push_str(s);
        }
        Selector::Refs(refs) => {
            key.push('R');
            for r in refs {
                key.push('\u{1f}');
                key.push_str(r);
            }
        }
    }
    key.push('\u{1e}');
    for e in entity_names {
        key.push('\u{1f}');
        key.push_str(e);
    }
    let hit = cat.plans.lock().get(&key).cloned();
    let plan = if let Some(p) = hit {
        p
    } else {
        let unlimited = Limits {
            max_features: usize::MAX,
            ..limits
        };
        let p = Arc::new(resolve(cat, sel, entity_names, unlimited)?);
        let mut plans = cat.plans.lock();
        if plans.len() >= PLAN_CACHE_ENTRIES {
            plans.clear();
        }
        plans.insert(key, p.clone());
        p
    };
    if plan.columns.len() > limits.max_features {
        return Err(CoreError::LimitExceeded(format!(
            "{} features requested; the limit is {} (the server's --max-features)",
            plan.columns.len(),
            limits.max_features
        )));
    }
    Ok(plan)
}

/// Resolves the selector against the catalog and the entity columns the request carries.
fn resolve(cat: &Catalog, sel: &Selector, entity_names: &[&str], limits: Limits) -> Result<Plan> {
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
        return Err(CoreError::LimitExceeded(format!(
            "{} features requested; the limit is {} (the server's --max-features)",
            refs.len(),
            limits.max_features
        )));
    }
    let mut views: Vec<PlanView> = Vec::new();
    let mut view_pos: Vec<Option<usize>> = vec![None; cat.views.len()];
    let mut used_entity = vec![false; entity_names.len()];
    // The plan view of catalog view `vi`, added on first use with its join keys' columns.
    let mut plan_view = |vi: usize, views: &mut Vec<PlanView>| -> Result<usize> {
        if let Some(p) = view_pos[vi] {
            return Ok(p);
        }
        let def = &cat.views[vi];
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
        Ok(views.len() - 1)
    };
    let mut columns = Vec::with_capacity(refs.len());
    for (vi, feature, reference) in refs {
        let def = &cat.views[vi];
        let slot = def.slot(&feature)?;
        let pv = plan_view(vi, &mut views)?;
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
    let mut on_demand = Vec::new();
    for p in 0..views.len() {
        let Some(od) = views[p].def.on_demand.clone() else {
            continue;
        };
        let mut inputs = Vec::with_capacity(od.sources.len());
        for (vi, feature) in &od.sources {
            let src = &cat.views[*vi];
            let slot = src.slot(feature)?;
            let pv = plan_view(*vi, &mut views)?;
            let s = src.slot_spec(slot);
            let shared = od.sources.iter().filter(|(_, f)| f == feature).count() > 1;
            inputs.push(OutColumn {
                reference: format!("{}:{feature}", src.name),
                feature: if shared {
                    format!("{}__{feature}", src.name)
                } else {
                    feature.clone()
                },
                view: pv,
                slot,
                dtype: s.dtype,
                dim: s.dim,
            });
        }
        on_demand.push(PlanOnDemand {
            view: p,
            inputs,
            request: od.request_fields.clone(),
        });
    }
    let is_request_field = |name: &str| {
        on_demand
            .iter()
            .any(|o| o.request.iter().any(|(f, _)| f == name))
    };
    if let Some(i) = used_entity
        .iter()
        .enumerate()
        .position(|(i, u)| !u && !is_request_field(entity_names[i]))
    {
        return Err(invalid!(
            "entity column '{}' is not a join key of any requested feature view",
            entity_names[i]
        ));
    }
    Ok(Plan {
        columns,
        views,
        on_demand,
    })
}
