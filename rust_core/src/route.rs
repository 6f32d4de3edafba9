//! Routing one request over a sharded cluster (`feature-serving route`).
//!
//! A router holds the registry (a [`Catalog`] without rows) and the cluster's shape. For a
//! request of any API it:
//!
//! 1. parses and plans it exactly as a node would ([`prepare`]);
//! 2. splits it: the plan's views are grouped by how their entities are routed (views with the
//!    same join keys share an owner per entity row; views without a stream source are not
//!    sharded and ride along with the first group), and every group's rows are split by owning
//!    shard (`murmur2(entity key) % partitions % shards`, as [`ShardCheck`] computes it on the
//!    node). Each (group, shard) becomes one [`Part`]: a `GetCellsRequest` with the group's
//!    features and that shard's rows;
//! 3. after the frontend has sent the parts to replicas of their shards, gathers the answers
//!    (raw cells, [`crate::cells_codec`]) back into request order and encodes the response
//!    with the same encoders a node uses ([`Prepared::encode`]). The result is byte for byte
//!    what a single node holding every row would answer.
//!
//! The router checks every column's type against its own registry, so a node running another
//! registry is an error, never a misread value.

use crate::catalog::Catalog;
use crate::cells_codec::PartCells;
use crate::error::{CoreError, Result};
use crate::invalid;
use crate::key::KeyColumn;
use crate::partition::murmur2;
use crate::proto::v1;
use crate::query::{dense_f32, encode_keys, Cell, CellSource};
use crate::scope::Scope;
use crate::serve::{prepare, Api, Prepared, ServeConfig};
use crate::types::{DType, KeyType, Status};
use ahash::AHashMap;
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The cluster as a router sees it.
#[derive(Debug)]
pub struct Router {
    pub catalog: Arc<Catalog>,
    pub shard_count: u32,
    /// Sharded views (those with a stream source) -> partition count of their topic.
    pub partitions: AHashMap<String, u32>,
}

/// One sub-request: a shard's rows of one group of views.
#[derive(Debug)]
pub struct Part {
    pub shard: u32,
    /// A serialized `GetCellsRequest`.
    pub body: Vec<u8>,
}

/// A request split into parts, waiting for their answers.
#[derive(Debug)]
pub struct Routed {
    prepared: Prepared,
    /// Per column of the plan: (group, index among the group's columns).
    col_map: Vec<(usize, usize)>,
    /// Per group, per entity: (part, row within the part).
    rows: Vec<Vec<(u32, u32)>>,
    /// Per part: its group and row count.
    part_shape: Vec<(usize, usize)>,
    pub parts: Vec<Part>,
}

impl Router {
    /// `catalog`: compiled from the registry; `partitions`: sharded views and their topics'
    /// partition counts.
    pub fn new(
        catalog: Arc<Catalog>,
        shard_count: u32,
        partitions: AHashMap<String, u32>,
    ) -> Result<Self> {
        if shard_count == 0 {
            return Err(invalid!("the shard count must be at least 1"));
        }
        if let Some((v, _)) = partitions.iter().find(|(_, p)| **p == 0) {
            return Err(invalid!(
                "view '{v}': the topic partition count must be at least 1"
            ));
        }
        if let Some(v) = partitions.keys().find(|v| catalog.view_index(v).is_err()) {
            return Err(invalid!("sharded view '{v}' is not in the registry"));
        }
        Ok(Self {
            catalog,
            shard_count,
            partitions,
        })
    }

    /// Parses, plans and splits a request. `spread` picks the shard that answers a request
    /// touching no sharded view (callers pass a counter, so such requests spread over shards).
    pub fn route(
        &self,
        api: Api,
        body: &[u8],
        cfg: &ServeConfig,
        scope: Option<&Scope>,
        spread: usize,
    ) -> Result<Routed> {
        if api == Api::Cells {
            return Err(invalid!("a router does not answer GetCells; ask a node"));
        }
        let prepared = prepare(&self.catalog, api, body, cfg, scope)?;
        if let Some(od) = prepared.plan().on_demand.first() {
            return Err(CoreError::InvalidArgument(format!(
                "on-demand feature view '{}' is not served through a router yet: ask a node \
                 (every node holds the views it reads when they are not sharded), or make it \
                 write-time (write_to_online_store: true), which a router serves like any view",
                prepared.plan().views[od.view].def.name
            )));
        }
        let plan = prepared.plan();
        let entities = &prepared.entities;
        let n = prepared.num_entities();

        // Group the plan's views by routing: same join-key columns and partition count.
        let mut groups: Vec<Group> = Vec::new();
        let mut loose = Vec::new();
        for (v, pv) in plan.views.iter().enumerate() {
            let Some(&parts) = self.partitions.get(&pv.def.name) else {
                loose.push(v);
                continue;
            };
            let sig = (pv.key_columns.clone(), key_types(&pv.def.join_keys), parts);
            if let Some(g) = groups.iter_mut().find(|g| g.sig.as_ref() == Some(&sig)) {
                g.views.push(v);
            } else {
                groups.push(Group {
                    sig: Some(sig),
                    views: vec![v],
                });
            }
        }
        if groups.is_empty() {
            groups.push(Group {
                sig: None,
                views: loose,
            });
        } else {
            groups[0].views.extend(loose);
        }
        let mut view_group = vec![0; plan.views.len()];
        for (g, group) in groups.iter().enumerate() {
            for &v in &group.views {
                view_group[v] = g;
            }
        }

        // Columns of each group, in plan order.
        let mut group_cols: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
        let mut col_map = Vec::with_capacity(plan.columns.len());
        for (c, col) in plan.columns.iter().enumerate() {
            let g = view_group[col.view];
            col_map.push((g, group_cols[g].len()));
            group_cols[g].push(c);
        }

        let service = prepared.service.clone().unwrap_or_default();
        let shards = self.shard_count as usize;
        let mut rows = Vec::with_capacity(groups.len());
        let mut parts = Vec::new();
        let mut part_shape = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let owners: Vec<usize> = match &group.sig {
                Some((_, _, n_parts)) => {
                    let pv = &plan.views[group.views[0]];
                    encode_keys(&pv.def, &pv.key_columns, entities, n)?
                        .iter()
                        .map(|k| {
                            let p =
                                (murmur2(k.get(4..).unwrap_or_default()) & 0x7fff_ffff) % n_parts;
                            (p % self.shard_count) as usize
                        })
                        .collect()
                }
                None => vec![spread % shards; n],
            };
            let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); shards];
            for (i, &o) in owners.iter().enumerate() {
                by_shard[o].push(i);
            }
            let mut key_cols: Vec<usize> = group
                .views
                .iter()
                .flat_map(|&v| plan.views[v].key_columns.iter().copied())
                .collect();
            key_cols.sort_unstable();
            key_cols.dedup();
            // The references are the same in every part of the group: encoded once. Protobuf
            // messages concatenate (repeated fields and map entries append), so each part is
            // these bytes followed by the encoding of its own entities.
            let refs = v1::GetCellsRequest {
                refs: group_cols[g]
                    .iter()
                    .map(|&c| {
                        let col = &plan.columns[c];
                        format!("{}:{}", plan.views[col.view].def.name, col.feature)
                    })
                    .collect(),
                feature_service: service.clone(),
                ..Default::default()
            }
            .encode_to_vec();
            let mut where_ = vec![(0u32, 0u32); n];
            for (shard, members) in by_shard.iter().enumerate() {
                if members.is_empty() {
                    continue;
                }
                let part = parts.len() as u32;
                for (r, &i) in members.iter().enumerate() {
                    where_[i] = (part, r as u32);
                }
                let rows_of_part = v1::GetCellsRequest {
                    entities: key_cols
                        .iter()
                        .map(|&k| {
                            let (name, col) = &entities.columns[k];
                            (name.clone(), entity_column(col, members))
                        })
                        .collect::<BTreeMap<_, _>>(),
                    ..Default::default()
                };
                let mut body = Vec::with_capacity(refs.len() + rows_of_part.encoded_len());
                body.extend_from_slice(&refs);
                rows_of_part.encode(&mut body).expect("a Vec grows");
                parts.push(Part {
                    shard: shard as u32,
                    body,
                });
                part_shape.push((g, members.len()));
            }
            rows.push(where_);
        }
        Ok(Routed {
            prepared,
            col_map,
            rows,
            part_shape,
            parts,
        })
    }
}

struct Group {
    /// Routing signature of a sharded group: join-key columns, their types, partitions.
    sig: Option<(Vec<usize>, Vec<KeyType>, u32)>,
    views: Vec<usize>,
}

fn key_types(join_keys: &[(String, KeyType)]) -> Vec<KeyType> {
    join_keys.iter().map(|(_, t)| *t).collect()
}

/// Rows `members` of a request's entity column, as a `GetCellsRequest` column.
fn entity_column(col: &KeyColumn, members: &[usize]) -> v1::EntityColumn {
    use v1::entity_column::Values;
    fn pick<T: Clone>(v: &[T], members: &[usize]) -> Vec<T> {
        members.iter().map(|&i| v[i].clone()).collect()
    }
    let values = match col {
        KeyColumn::Int64(v) => Values::Int64Values(v1::Int64Column {
            values: pick(v, members),
        }),
        KeyColumn::Int32(v) => Values::Int32Values(v1::Int32Column {
            values: pick(v, members),
        }),
        KeyColumn::Str(v) => Values::StringValues(v1::StringColumn {
            values: pick(v, members),
        }),
        KeyColumn::Bytes(v) => Values::BytesValues(v1::BytesColumn {
            values: pick(v, members),
        }),
    };
    v1::EntityColumn {
        values: Some(values),
    }
}

impl Routed {
    #[must_use]
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// Gathers the parts' answers (`answers[i]` answers `parts[i]`) and encodes the response.
    pub fn merge(&self, answers: &[&[u8]], cfg: &ServeConfig) -> Result<Vec<u8>> {
        self.merge_logged(answers, cfg, None)
    }

    /// [`Routed::merge`], logging the merged answer when its service is logged (a router
    /// started with `--log-at router`, `serve/feature_log.rs`).
    pub fn merge_logged(
        &self,
        answers: &[&[u8]],
        cfg: &ServeConfig,
        log: Option<&crate::serve::feature_log::LogTag>,
    ) -> Result<Vec<u8>> {
        if answers.len() != self.part_shape.len() {
            return Err(CoreError::BadShardAnswer(format!(
                "{} answers for {} parts",
                answers.len(),
                self.part_shape.len()
            )));
        }
        let plan = self.prepared.plan();
        let mut parts = Vec::with_capacity(answers.len());
        for (i, (answer, &(g, n))) in answers.iter().zip(&self.part_shape).enumerate() {
            let expect: Vec<(DType, u32)> = plan
                .columns
                .iter()
                .zip(&self.col_map)
                .filter(|(_, (cg, _))| *cg == g)
                .map(|(c, _)| (c.dtype, c.dim))
                .collect();
            let part = PartCells::parse(answer, n, &expect).map_err(|e| {
                let shard = self.parts.get(i).map_or(0, |p| p.shard);
                CoreError::BadShardAnswer(format!("the answer of shard {shard}: {e}"))
            })?;
            parts.push(part);
        }
        let gathered = Gathered {
            n: self.prepared.num_entities(),
            parts,
            col_map: &self.col_map,
            rows: &self.rows,
        };
        if let Some(tag) = log {
            crate::serve::feature_log::FeatureLog::append(tag, &self.prepared, &gathered);
        }
        Ok(self.prepared.encode(&gathered, cfg))
    }
}

/// The answers of a routed request's parts, read in the request's order.
pub struct Gathered<'a> {
    n: usize,
    parts: Vec<PartCells<'a>>,
    col_map: &'a [(usize, usize)],
    rows: &'a [Vec<(u32, u32)>],
}

/// Column `c` of a routed request: its group and its index among the group's columns.
#[derive(Clone, Copy)]
pub struct GatheredCol {
    group: usize,
    local: usize,
}

impl CellSource for Gathered<'_> {
    type Col = GatheredCol;

    fn num_entities(&self) -> usize {
        self.n
    }

    fn col(&self, c: usize) -> GatheredCol {
        let (group, local) = self.col_map[c];
        GatheredCol { group, local }
    }

    #[inline]
    fn cell(&self, col: GatheredCol, e: usize) -> Cell<'_> {
        let (part, r) = self.rows[col.group][e];
        self.parts[part as usize].cell(col.local, r as usize)
    }

    #[inline]
    fn f32(&self, col: GatheredCol, e: usize) -> (f32, Status, i64) {
        let (part, r) = self.rows[col.group][e];
        match self.parts[part as usize].present_f32(col.local, r as usize) {
            Some((x, ts)) => (x, Status::Present, ts),
            None => dense_f32(self.cell(col, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::ShardCheck;
    use crate::proto::feast;
    use crate::serve::tests::{cfg, feast_req, fixture, fv, registry, serve_at, v1_req, NOW};
    use crate::serve::{serve, Caller};
    use crate::store::Store;
    use feast::value::Val;
    use v1::entity_column::Values;

    const SHARDS: u32 = 3;

    fn parts() -> AHashMap<String, u32> {
        [("user_profile", 4), ("fresh", 4), ("kitchen", 5)]
            .into_iter()
            .map(|(v, p)| (v.to_string(), p))
            .collect()
    }

    fn router(n_features: usize, partitions: AHashMap<String, u32>) -> Router {
        let cat = Catalog::from_spec_json(&registry(n_features)).unwrap();
        Router::new(Arc::new(cat), SHARDS, partitions).unwrap()
    }

    /// Routes `body`, has the (unsharded) store answer every part as the owning shard would
    /// (checked with that shard's `ShardCheck`), merges.
    fn routed(r: &Router, store: &Store, api: Api, body: &[u8]) -> Vec<u8> {
        let routed = r.route(api, body, &cfg(), None, 0).unwrap();
        let answers: Vec<Vec<u8>> = routed
            .parts
            .iter()
            .map(|p| {
                let check = ShardCheck::new(p.shard, SHARDS, r.partitions.clone()).unwrap();
                let caller = Caller {
                    shard: Some(&check),
                    now_us: NOW,
                    ..Caller::default()
                };
                serve(store, Api::Cells, &p.body, &cfg(), caller)
                    .unwrap()
                    .body
            })
            .collect();
        let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
        routed.merge(&slices, &cfg()).unwrap()
    }

    /// Every part of `routed` answered by `store` (not sharded) as raw cells.
    fn cells_answers(store: &Store, routed: &Routed) -> Vec<Vec<u8>> {
        routed
            .parts
            .iter()
            .map(|p| {
                serve_at(Api::Cells, store, &p.body, &cfg(), NOW)
                    .unwrap()
                    .body
            })
            .collect()
    }

    fn local(store: &Store, api: Api, body: &[u8]) -> Vec<u8> {
        serve_at(api, store, body, &cfg(), NOW).unwrap().body
    }

    fn same(r: &Router, store: &Store, api: Api, body: &[u8]) {
        let want = local(store, api, body);
        let got = routed(r, store, api, body);
        assert!(
            got == want,
            "{api:?}: routed answer differs\n got {}\nwant {}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
    }

    #[test]
    fn routed_answers_equal_one_node_on_every_api() {
        let (_d, store) = fixture(40, 6);
        let r = router(6, parts());
        let users: Vec<i64> = (0..40).chain([999, -7, 3, 3]).collect();
        let user_json = serde_json::to_string(&users).unwrap();
        let f: Vec<String> = (0..6)
            .map(|i| format!("\"user_profile:f{i:03}\""))
            .collect();
        let feats = format!("{},\"fresh:score\"", f.join(","));
        for body in [
            format!(r#"{{"features":[{feats}],"entities":{{"user_id":{user_json}}}}}"#),
            format!(
                r#"{{"feature_service":"svc","full_feature_names":true,"entities":{{"user_id":{user_json}}}}}"#
            ),
            // Two groups (user_id and sku keys) in one request.
            r#"{"features":["kitchen:s","user_profile:f001","kitchen:emb","kitchen:t","fresh:score","kitchen:y","kitchen:b","kitchen:i32","kitchen:i64","kitchen:f64","kitchen:f32"],"entities":{"sku":["a","b","zz","a"],"user_id":[1,2,3,999]}}"#.to_string(),
        ] {
            same(&r, &store, Api::FeastHttp, body.as_bytes());
        }
        for layout in ["columns", "dense"] {
            let body = format!(
                r#"{{"features":[{feats}],"entities":{{"user_id":{user_json}}},"layout":"{layout}","include_statuses":true,"include_event_timestamps":true}}"#
            );
            same(&r, &store, Api::V1Http, body.as_bytes());
        }
        let refs: Vec<String> = (0..6)
            .map(|i| format!("user_profile:f{i:03}"))
            .chain(["fresh:score".to_string()])
            .collect();
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let ids = || {
            Values::Int64Values(v1::Int64Column {
                values: users.clone(),
            })
        };
        for layout in [v1::Layout::Columns, v1::Layout::Dense] {
            let req = v1_req(&refs, vec![("user_id", ids())], layout);
            same(&r, &store, Api::V1Grpc, &req.encode_to_vec());
        }
        let req = feast_req(
            &["kitchen:s", "kitchen:emb", "user_profile:f002", "kitchen:t"],
            vec![
                (
                    "sku",
                    ["b", "a", "q"]
                        .map(|s| fv(Val::StringVal(s.into())))
                        .to_vec(),
                ),
                ("user_id", [5, 6, 7].map(|u| fv(Val::Int64Val(u))).to_vec()),
            ],
        );
        same(&r, &store, Api::FeastGrpc, &req.encode_to_vec());
    }

    #[test]
    fn parts_follow_owners_and_unsharded_views_spread() {
        let (_d, store) = fixture(30, 2);
        let r = router(2, parts());
        let body = br#"{"features":["user_profile:f000","fresh:score"],"entities":{"user_id":[0,1,2,3,4,5,6,7,8,9,10,11]}}"#;
        let routed = r.route(Api::FeastHttp, body, &cfg(), None, 0).unwrap();
        // One group (both views keyed by user_id over 4 partitions): at most one part a shard.
        let mut shards: Vec<u32> = routed.parts.iter().map(|p| p.shard).collect();
        shards.dedup();
        assert_eq!(shards.len(), routed.parts.len());
        assert!(
            routed.parts.len() > 1,
            "12 keys over 3 shards land on more than one"
        );
        // No view sharded: one part, on the shard `spread` picks.
        let r = router(2, AHashMap::new());
        for spread in 0..4 {
            let routed = r.route(Api::FeastHttp, body, &cfg(), None, spread).unwrap();
            assert_eq!(routed.parts.len(), 1);
            assert_eq!(routed.parts[0].shard, spread as u32 % SHARDS);
        }
        same(&r, &store, Api::FeastHttp, body);
        // Router errors are the node's errors.
        let e = r
            .route(
                Api::FeastHttp,
                br#"{"features":["nope:x"],"entities":{"user_id":[1]}}"#,
                &cfg(),
                None,
                0,
            )
            .unwrap_err();
        assert!(
            matches!(e, CoreError::NotFound(ref m) if m.contains("unknown feature view 'nope'")),
            "{e}"
        );
    }

    #[test]
    fn answers_from_another_registry_or_malformed_are_refused() {
        let (_d, store) = fixture(10, 2);
        let r = router(2, parts());
        let body = br#"{"features":["user_profile:f000","user_profile:f001"],"entities":{"user_id":[1,2,3,4,5,6]}}"#;
        let routed = r.route(Api::FeastHttp, body, &cfg(), None, 0).unwrap();
        let answers = cells_answers(&store, &routed);
        let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
        assert!(routed.merge(&slices, &cfg()).is_ok());
        // Too few answers, truncated, trailing bytes.
        assert!(routed.merge(&slices[1..], &cfg()).is_err());
        let mut cut = slices.clone();
        let short = &answers[0][..answers[0].len() - 1];
        cut[0] = short;
        let e = routed.merge(&cut, &cfg()).unwrap_err();
        assert!(
            matches!(e, CoreError::BadShardAnswer(ref m) if m.contains("truncated")),
            "{e}"
        );
        let mut long = answers[0].clone();
        long.push(0);
        cut[0] = &long;
        assert!(matches!(
            routed.merge(&cut, &cfg()),
            Err(CoreError::BadShardAnswer(_))
        ));
        // A node whose registry has f001 as int64: refused, naming the registries.
        let other = registry(2).replacen(
            r#"{"name":"f001","dtype":"float32"}"#,
            r#"{"name":"f001","dtype":"int64"}"#,
            1,
        );
        let dir = tempfile::tempdir().unwrap();
        let node = Store::open(
            dir.path(),
            &other,
            crate::store::StoreOptions::default(),
            false,
        )
        .unwrap();
        let answers = cells_answers(&node, &routed);
        let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
        let e = routed.merge(&slices, &cfg()).unwrap_err();
        assert!(
            matches!(e, CoreError::BadShardAnswer(ref m) if m.contains("different registries")),
            "{e}"
        );
    }

    #[test]
    fn service_scopes_travel_with_the_parts() {
        let (_d, store) = fixture(10, 3);
        let r = router(3, parts());
        let svc_only = Scope::new(Some(vec![]), vec!["svc".into()]);
        let body = br#"{"feature_service":"svc","entities":{"user_id":[1,2,3,4,5]}}"#;
        // The router checks the caller's scope before planning...
        let routed = r
            .route(Api::FeastHttp, body, &cfg(), Some(&svc_only), 0)
            .unwrap();
        // ...and each node checks it again on its part, against the service.
        for p in &routed.parts {
            serve_scoped_cells(&store, &p.body, &svc_only).unwrap();
        }
        let denied = r
            .route(
                Api::FeastHttp,
                br#"{"features":["user_profile:f001"],"entities":{"user_id":[1]}}"#,
                &cfg(),
                Some(&svc_only),
                0,
            )
            .unwrap_err();
        assert!(matches!(denied, CoreError::PermissionDenied(_)), "{denied}");
        // A part that claims the service but asks for a feature outside it is refused.
        let forged = v1::GetCellsRequest {
            refs: vec!["user_profile:f002".into()],
            entities: [(
                "user_id".to_string(),
                v1::EntityColumn {
                    values: Some(Values::Int64Values(v1::Int64Column { values: vec![1] })),
                },
            )]
            .into_iter()
            .collect(),
            feature_service: "svc".into(),
        };
        let e = serve_scoped_cells(&store, &forged.encode_to_vec(), &svc_only).unwrap_err();
        assert!(
            matches!(e, CoreError::PermissionDenied(ref m) if m.contains("not part of feature service 'svc'")),
            "{e}"
        );
    }

    fn serve_scoped_cells(store: &Store, body: &[u8], scope: &Scope) -> Result<Vec<u8>> {
        let caller = Caller {
            scope: Some(scope),
            now_us: NOW,
            ..Caller::default()
        };
        serve(store, Api::Cells, body, &cfg(), caller).map(|s| s.body)
    }
}
