//! The registry as the core sees it: the spec Python sends (`Registry.to_core_json()`), the
//! physical schema stored per view, and the compiled catalog the serving path reads; request
//! plans ([`plan`]) are resolved against it and cached in it.

pub mod plan;
pub mod vector_index;

use crate::error::{CoreError, Result};
use crate::row::{RowLayout, Slot};
use crate::types::{DType, KeyType};
use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
pub struct RegistrySpec {
    #[serde(default)]
    pub project: String,
    pub feature_views: Vec<ViewSpec>,
    #[serde(default)]
    pub feature_services: Vec<ServiceSpec>,
    /// Request-time on-demand views (write-time ones arrive as plain feature views).
    #[serde(default)]
    pub on_demand_feature_views: Vec<OnDemandSpec>,
}

/// A request-time on-demand view: a Python transform (run by the frontend) over stored
/// features of other views and fields that arrive with the request.
#[derive(Debug, Clone, Deserialize)]
pub struct OnDemandSpec {
    pub name: String,
    pub sources: Vec<RefSpec>,
    #[serde(default)]
    pub request_fields: Vec<FeatureSpec>,
    pub features: Vec<FeatureSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ViewSpec {
    pub name: String,
    pub join_keys: Vec<JoinKeySpec>,
    #[serde(default)]
    pub ttl_seconds: i64,
    pub features: Vec<FeatureSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinKeySpec {
    pub name: String,
    pub dtype: KeyType,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    pub dtype: DType,
    #[serde(default)]
    pub dim: Option<u32>,
    /// A `float32_array` feature's vector index (kept by `crate::vector`).
    #[serde(default)]
    pub vector_index: Option<vector_index::VectorIndexSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub features: Vec<RefSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RefSpec {
    pub view: String,
    pub feature: String,
}

impl RegistrySpec {
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(|e| CoreError::InvalidArgument(format!("registry: {e}")))
    }
}

/// What is stored per view in the `meta` column family: the append-only slot list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhysicalSchema {
    /// Unique per incarnation of the view's data (changes when a forced change drops it).
    pub id: u32,
    pub join_keys: Vec<JoinKeySpec>,
    pub slots: Vec<SlotSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotSpec {
    pub name: String,
    pub dtype: DType,
    pub dim: u32,
    pub dropped: bool,
}

/// Outcome of reconciling a view's spec with what is stored.
#[derive(Debug, PartialEq)]
pub enum Evolution {
    Unchanged,
    /// New schema to store (features appended or, with force, dropped).
    Changed(PhysicalSchema),
    /// Join keys changed under force: the view's stored rows are discarded.
    Recreated(PhysicalSchema),
}

fn slot_of(f: &FeatureSpec) -> SlotSpec {
    SlotSpec {
        name: f.name.clone(),
        dtype: f.dtype,
        dim: f.dim.unwrap_or(0),
        dropped: false,
    }
}

/// Reconciles `spec` with the stored schema. Adding features is always allowed; removing one,
/// changing its type or changing the join keys is refused unless `force`. Every slot counts
/// as holding values; [`evolve_with`] asks the store.
pub fn evolve(
    stored: Option<&PhysicalSchema>,
    spec: &ViewSpec,
    force: bool,
    next_id: u32,
) -> Result<Evolution> {
    evolve_with(stored, spec, force, next_id, &mut |_| Ok(true))
}

/// [`evolve`], where removing a feature or changing its type needs `force` only if
/// `has_values(slot)` says some stored row holds a value in that slot: a feature added and
/// removed again before any value was written loses nothing.
pub fn evolve_with(
    stored: Option<&PhysicalSchema>,
    spec: &ViewSpec,
    force: bool,
    next_id: u32,
    has_values: &mut dyn FnMut(usize) -> Result<bool>,
) -> Result<Evolution> {
    let fresh = || PhysicalSchema {
        id: next_id,
        join_keys: spec.join_keys.clone(),
        slots: spec.features.iter().map(slot_of).collect(),
    };
    let Some(old) = stored else {
        return Ok(Evolution::Recreated(fresh()));
    };
    let view = &spec.name;
    if old.join_keys != spec.join_keys {
        if !force {
            let show = |k: &[JoinKeySpec]| {
                k.iter()
                    .map(|j| format!("{}:{}", j.name, j.dtype.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(CoreError::Schema(format!(
                "feature view '{view}': join keys changed from [{}] to [{}]; stored rows would \
                 no longer be found. Use force to discard the view's stored data",
                show(&old.join_keys),
                show(&spec.join_keys)
            )));
        }
        return Ok(Evolution::Recreated(fresh()));
    }
    let mut new = old.clone();
    let wanted: AHashMap<&str, &FeatureSpec> =
        spec.features.iter().map(|f| (f.name.as_str(), f)).collect();
    for (i, slot) in new.slots.iter_mut().enumerate().filter(|(_, s)| !s.dropped) {
        let wanted = wanted.get(slot.name.as_str());
        let retyped =
            wanted.is_some_and(|f| (f.dtype, f.dim.unwrap_or(0)) != (slot.dtype, slot.dim));
        let may_drop = force || ((wanted.is_none() || retyped) && !has_values(i)?);
        match wanted {
            None if !may_drop => {
                return Err(CoreError::Schema(format!(
                    "feature view '{view}': feature '{}' was removed from the registry but has \
                     stored values; use force to drop it",
                    slot.name
                )))
            }
            Some(f) if (f.dtype, f.dim.unwrap_or(0)) != (slot.dtype, slot.dim) && !may_drop => {
                return Err(CoreError::Schema(format!(
                    "feature view '{view}': feature '{}' changed type from {} to {}; stored \
                     values cannot be reinterpreted. Use force to drop the stored values",
                    slot.name,
                    type_label(slot.dtype, slot.dim),
                    type_label(f.dtype, f.dim.unwrap_or(0)),
                )))
            }
            None => slot.dropped = true,
            Some(f) if (f.dtype, f.dim.unwrap_or(0)) != (slot.dtype, slot.dim) => {
                slot.dropped = true;
            }
            Some(_) => {}
        }
    }
    for f in &spec.features {
        if !new.slots.iter().any(|s| !s.dropped && s.name == f.name) {
            new.slots.push(slot_of(f));
        }
    }
    if new.slots.len() > usize::from(u16::MAX) {
        return Err(CoreError::Schema(format!(
            "feature view '{view}': more than 65535 feature slots (dropped ones included)"
        )));
    }
    Ok(if new == *old {
        Evolution::Unchanged
    } else {
        Evolution::Changed(new)
    })
}

fn type_label(dtype: DType, dim: u32) -> String {
    if dtype == DType::Float32Array {
        format!("float32_array[{dim}]")
    } else {
        dtype.name().to_string()
    }
}

/// A compiled feature view.
#[derive(Debug)]
pub struct ViewDef {
    pub name: String,
    pub id: u32,
    pub join_keys: Vec<(String, KeyType)>,
    pub layout: RowLayout,
    /// Live features in registry order: (name, slot).
    pub features: Vec<(String, usize)>,
    pub by_name: AHashMap<String, usize>,
    /// 0 = no TTL.
    pub ttl_micros: i64,
    /// Set for a request-time on-demand view: it has no stored rows; its rows are made from
    /// the transform's output columns, per request.
    pub on_demand: Option<Arc<OnDemandDef>>,
}

/// What a request-time on-demand view reads: stored features of other views (catalog view
/// index, feature name) and typed request fields.
#[derive(Debug)]
pub struct OnDemandDef {
    pub sources: Vec<(usize, String)>,
    pub request_fields: Vec<(String, DType)>,
}

impl ViewDef {
    pub fn cf_name(name: &str) -> String {
        format!("view:{name}")
    }

    /// Prefix of this view's entries in the hot tier.
    pub fn hot_prefix(&self) -> [u8; 4] {
        self.id.to_be_bytes()
    }

    pub fn slot(&self, feature: &str) -> Result<usize> {
        self.by_name.get(feature).copied().ok_or_else(|| {
            CoreError::NotFound(format!(
                "feature view '{}' has no feature '{feature}'{}",
                self.name,
                did_you_mean(feature, self.features.iter().map(|f| f.0.as_str()))
            ))
        })
    }

    pub fn slot_spec(&self, slot: usize) -> Slot {
        self.layout.slots()[slot]
    }
}

/// The registry compiled against the stored schemas.
#[derive(Debug, Default)]
pub struct Catalog {
    pub project: String,
    pub views: Vec<Arc<ViewDef>>,
    pub by_name: AHashMap<String, usize>,
    /// Service name -> (view index, feature name) refs in order.
    pub services: AHashMap<String, Vec<(usize, String)>>,
    /// The spec this catalog was compiled from (returned by `registry_json`).
    pub spec_json: String,
    /// Plans of recent requests, keyed by selector and entity names (see [`plan::plan_cached`]).
    /// Lives in the catalog so that a registry change, which swaps the catalog, drops it.
    pub plans: parking_lot::Mutex<AHashMap<String, Arc<plan::Plan>>>,
}

impl Catalog {
    pub fn compile(
        spec: &RegistrySpec,
        spec_json: &str,
        schemas: &AHashMap<String, PhysicalSchema>,
    ) -> Result<Self> {
        let mut cat = Catalog {
            project: spec.project.clone(),
            spec_json: spec_json.to_string(),
            ..Default::default()
        };
        for v in &spec.feature_views {
            let ps = schemas
                .get(&v.name)
                .ok_or_else(|| CoreError::Storage(format!("no stored schema for '{}'", v.name)))?;
            let layout = RowLayout::new(
                ps.slots
                    .iter()
                    .map(|s| Slot {
                        dtype: s.dtype,
                        dim: s.dim,
                    })
                    .collect(),
            );
            let live = |name: &str| {
                ps.slots
                    .iter()
                    .position(|s| !s.dropped && s.name == name)
                    .expect("evolve() keeps a live slot per feature")
            };
            let features: Vec<(String, usize)> = v
                .features
                .iter()
                .map(|f| (f.name.clone(), live(&f.name)))
                .collect();
            let def = ViewDef {
                name: v.name.clone(),
                id: ps.id,
                join_keys: v
                    .join_keys
                    .iter()
                    .map(|k| (k.name.clone(), k.dtype))
                    .collect(),
                layout,
                by_name: features.iter().cloned().collect(),
                features,
                ttl_micros: v.ttl_seconds.saturating_mul(1_000_000),
                on_demand: None,
            };
            if cat
                .by_name
                .insert(v.name.clone(), cat.views.len())
                .is_some()
            {
                return Err(CoreError::InvalidArgument(format!(
                    "registry: feature view '{}' is defined twice",
                    v.name
                )));
            }
            cat.views.push(Arc::new(def));
        }
        let stored_views = cat.views.len();
        for (i, o) in spec.on_demand_feature_views.iter().enumerate() {
            let mut sources = Vec::with_capacity(o.sources.len());
            for r in &o.sources {
                let vi = cat.view_index(&r.view)?;
                if vi >= stored_views {
                    return Err(CoreError::InvalidArgument(format!(
                        "registry: on-demand feature view '{}' reads '{}:{}', another on-demand \
                         view; sources must be feature views",
                        o.name, r.view, r.feature
                    )));
                }
                cat.views[vi].slot(&r.feature)?;
                sources.push((vi, r.feature.clone()));
            }
            let slots: Vec<SlotSpec> = o.features.iter().map(slot_of).collect();
            let layout = RowLayout::new(
                slots
                    .iter()
                    .map(|s| Slot {
                        dtype: s.dtype,
                        dim: s.dim,
                    })
                    .collect(),
            );
            let features: Vec<(String, usize)> = o
                .features
                .iter()
                .enumerate()
                .map(|(slot, f)| (f.name.clone(), slot))
                .collect();
            let def = ViewDef {
                name: o.name.clone(),
                // Never stored nor cached: the id only has to differ from the stored views'.
                id: u32::MAX - u32::try_from(i).unwrap_or(0),
                join_keys: Vec::new(),
                layout,
                by_name: features.iter().cloned().collect(),
                features,
                ttl_micros: 0,
                on_demand: Some(Arc::new(OnDemandDef {
                    sources,
                    request_fields: o
                        .request_fields
                        .iter()
                        .map(|f| (f.name.clone(), f.dtype))
                        .collect(),
                })),
            };
            if cat
                .by_name
                .insert(o.name.clone(), cat.views.len())
                .is_some()
            {
                return Err(CoreError::InvalidArgument(format!(
                    "registry: '{}' is the name of a feature view and of an on-demand view",
                    o.name
                )));
            }
            cat.views.push(Arc::new(def));
        }
        for s in &spec.feature_services {
            let mut refs = Vec::with_capacity(s.features.len());
            for r in &s.features {
                let vi = cat.view_index(&r.view)?;
                cat.views[vi].slot(&r.feature)?;
                refs.push((vi, r.feature.clone()));
            }
            cat.services.insert(s.name.clone(), refs);
        }
        Ok(cat)
    }

    /// A catalog straight from a registry spec, with fresh layouts: for a process that holds
    /// no rows (a router), which never reads slots.
    pub fn from_spec_json(spec_json: &str) -> Result<Self> {
        let spec = RegistrySpec::from_json(spec_json)?;
        let mut schemas = AHashMap::new();
        for (i, v) in spec.feature_views.iter().enumerate() {
            let fresh = PhysicalSchema {
                id: u32::try_from(i + 1).unwrap_or(u32::MAX),
                join_keys: v.join_keys.clone(),
                slots: v.features.iter().map(slot_of).collect(),
            };
            schemas.insert(v.name.clone(), fresh);
        }
        Self::compile(&spec, spec_json, &schemas)
    }

    pub fn view_index(&self, name: &str) -> Result<usize> {
        self.by_name.get(name).copied().ok_or_else(|| {
            CoreError::NotFound(format!(
                "unknown feature view '{name}'{}",
                did_you_mean(name, self.views.iter().map(|v| v.name.as_str()))
            ))
        })
    }

    pub fn view(&self, name: &str) -> Result<&Arc<ViewDef>> {
        Ok(&self.views[self.view_index(name)?])
    }
}

/// ` (did you mean 'x'?)` for the closest candidate within a small edit distance, else "".
pub fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let best = candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d);
    best.map(|(_, c)| format!(" (did you mean '{c}'?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(features: &[(&str, DType)]) -> ViewSpec {
        ViewSpec {
            name: "v".into(),
            join_keys: vec![JoinKeySpec {
                name: "id".into(),
                dtype: KeyType::Int64,
            }],
            ttl_seconds: 0,
            features: features
                .iter()
                .map(|(n, t)| FeatureSpec {
                    name: (*n).into(),
                    dtype: *t,
                    dim: None,
                    vector_index: None,
                })
                .collect(),
        }
    }

    fn stored(features: &[(&str, DType)]) -> PhysicalSchema {
        match evolve(None, &spec(features), false, 1).unwrap() {
            Evolution::Recreated(p) => p,
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn adding_features_appends_slots() {
        let old = stored(&[("a", DType::Float32), ("b", DType::Int64)]);
        let Evolution::Changed(new) = evolve(
            Some(&old),
            &spec(&[
                ("c", DType::String),
                ("a", DType::Float32),
                ("b", DType::Int64),
            ]),
            false,
            2,
        )
        .unwrap() else {
            panic!()
        };
        let names: Vec<&str> = new.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"], "existing slots keep their place");
        assert_eq!(new.id, old.id);
    }

    #[test]
    fn removing_or_retyping_needs_force() {
        let old = stored(&[("a", DType::Float32), ("b", DType::Int64)]);
        let err = evolve(Some(&old), &spec(&[("a", DType::Float32)]), false, 2).unwrap_err();
        assert!(err.to_string().contains("feature 'b' was removed"), "{err}");
        let err = evolve(
            Some(&old),
            &spec(&[("a", DType::Float64), ("b", DType::Int64)]),
            false,
            2,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("'a' changed type from float32 to float64"),
            "{err}"
        );
        let Evolution::Changed(new) = evolve(
            Some(&old),
            &spec(&[("a", DType::Float64), ("b", DType::Int64)]),
            true,
            2,
        )
        .unwrap() else {
            panic!()
        };
        assert!(new.slots[0].dropped);
        assert_eq!(new.slots[2].name, "a");
        assert_eq!(new.slots[2].dtype, DType::Float64);
    }

    #[test]
    fn removing_or_retyping_a_feature_without_values_needs_no_force() {
        let old = stored(&[("a", DType::Float32), ("b", DType::Int64)]);
        // 'b' (slot 1) has no stored value, 'a' (slot 0) has
        let mut asked = Vec::new();
        let mut has_values = |slot: usize| {
            asked.push(slot);
            Ok(slot == 0)
        };
        let Evolution::Changed(new) = evolve_with(
            Some(&old),
            &spec(&[("a", DType::Float32)]),
            false,
            2,
            &mut has_values,
        )
        .unwrap() else {
            panic!()
        };
        assert!(new.slots[1].dropped);
        assert!(!new.slots[0].dropped);
        let err = evolve_with(
            Some(&old),
            &spec(&[("b", DType::Int64)]),
            false,
            2,
            &mut has_values,
        )
        .unwrap_err();
        assert!(err.to_string().contains("feature 'a' was removed"), "{err}");
        let Evolution::Changed(new) = evolve_with(
            Some(&old),
            &spec(&[("a", DType::Float32), ("b", DType::String)]),
            false,
            2,
            &mut has_values,
        )
        .unwrap() else {
            panic!()
        };
        assert!(new.slots[1].dropped);
        assert_eq!(new.slots[2].dtype, DType::String);
        assert_eq!(
            asked,
            [1, 0, 1],
            "only removed or retyped slots are looked at"
        );
    }

    #[test]
    fn unchanged_and_join_key_change() {
        let old = stored(&[("a", DType::Float32)]);
        assert_eq!(
            evolve(Some(&old), &spec(&[("a", DType::Float32)]), false, 2).unwrap(),
            Evolution::Unchanged
        );
        let mut s = spec(&[("a", DType::Float32)]);
        s.join_keys[0].dtype = KeyType::String;
        assert!(evolve(Some(&old), &s, false, 2).is_err());
        assert!(
            matches!(evolve(Some(&old), &s, true, 2).unwrap(), Evolution::Recreated(p) if p.id == 2)
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("user_profle", ["user_profile", "item"].into_iter()),
            " (did you mean 'user_profile'?)"
        );
        assert_eq!(did_you_mean("zzz", ["user_profile"].into_iter()), "");
    }
}
