//! What a node's `Store` and a router's `RouterCore` both hold to answer requests: the limits
//! and encoding options, and the read scopes of API keys (registered by `serving/auth.py`).

use crate::error::CoreError;
use crate::scope::Scope;
use crate::serve::{Api, ServeConfig};
use ahash::AHashMap;
use parking_lot::RwLock;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct ServeSettings {
    config: RwLock<ServeConfig>,
    scopes: RwLock<AHashMap<u64, Arc<Scope>>>,
}

impl ServeSettings {
    pub(super) fn configure(
        &self,
        max_entities: usize,
        max_features: usize,
        json_float32_shortest: bool,
        encode_threads: usize,
    ) {
        *self.config.write() = ServeConfig {
            encode_threads,
            ..ServeConfig::new(max_entities, max_features, json_float32_shortest)
        };
    }

    pub(super) fn config(&self) -> ServeConfig {
        *self.config.read()
    }

    /// `views = None` reads everything.
    pub(super) fn set_scope(
        &self,
        scope_id: u64,
        views: Option<Vec<String>>,
        services: Vec<String>,
    ) {
        self.scopes
            .write()
            .insert(scope_id, Arc::new(Scope::new(views, services)));
    }

    pub(super) fn clear_scopes(&self) {
        self.scopes.write().clear();
    }

    /// The registered read scope of an API key (`None`: the caller reads everything).
    pub(super) fn scope(&self, scope_id: Option<u64>) -> Result<Option<Arc<Scope>>, CoreError> {
        scope_id
            .map(|id| {
                self.scopes.read().get(&id).cloned().ok_or_else(|| {
                    CoreError::PermissionDenied("this API key has no read scope".into())
                })
            })
            .transpose()
    }
}

/// The core API a frontend names (`feast_http`, `feast_grpc`, `v1_grpc`, `v1_http`, `cells`).
pub(super) fn parse_api(api: &str) -> Result<Api, CoreError> {
    Ok(match api {
        "feast_http" => Api::FeastHttp,
        "feast_grpc" => Api::FeastGrpc,
        "v1_grpc" => Api::V1Grpc,
        "v1_http" => Api::V1Http,
        "cells" => Api::Cells,
        other => return Err(CoreError::InvalidArgument(format!("unknown api '{other}'"))),
    })
}
