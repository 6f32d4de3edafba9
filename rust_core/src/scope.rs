//! Read scopes of API keys, checked before a request touches the catalog: a key that may not
//! read a view gets the same answer whether or not the view exists.

use crate::catalog::plan::{split_ref, Selector};
use crate::catalog::Catalog;
use crate::error::{CoreError, Result};
use ahash::AHashSet;

/// What one API key may read.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Every view and feature service.
    pub all: bool,
    pub views: AHashSet<String>,
    /// Feature services the key may read as a whole, whatever views they span.
    pub services: AHashSet<String>,
}

fn denied(what: &str) -> CoreError {
    CoreError::PermissionDenied(format!("this API key may not read {what}"))
}

impl Scope {
    /// A key's scope: `views = None` reads everything; else the views and services listed.
    pub fn new(views: Option<Vec<String>>, services: Vec<String>) -> Self {
        Self {
            all: views.is_none(),
            views: views.unwrap_or_default().into_iter().collect(),
            services: services.into_iter().collect(),
        }
    }

    pub fn check(&self, cat: &Catalog, sel: &Selector) -> Result<()> {
        if self.all {
            return Ok(());
        }
        match sel {
            Selector::Service(s) => {
                if self.services.contains(s) {
                    return Ok(());
                }
                // A service is also readable when every view it spans is.
                let spans_allowed_views = cat.services.get(s).is_some_and(|refs| {
                    refs.iter()
                        .all(|(vi, _)| self.views.contains(&cat.views[*vi].name))
                });
                if spans_allowed_views {
                    Ok(())
                } else {
                    Err(denied(&format!("feature service '{s}'")))
                }
            }
            Selector::Refs(refs) => {
                for r in refs {
                    let view = r.split_once(':').map_or(r.as_str(), |(v, _)| v);
                    if !self.views.contains(view) {
                        return Err(denied(&format!("feature view '{view}'")));
                    }
                }
                Ok(())
            }
        }
    }

    /// The check of a routed part of a feature-service request (a `GetCellsRequest` naming the
    /// service): the caller may read the service, and every reference belongs to it.
    pub fn check_service_part(&self, cat: &Catalog, service: &str, sel: &Selector) -> Result<()> {
        self.check(cat, &Selector::Service(service.to_string()))?;
        let Selector::Refs(refs) = sel else {
            return Ok(());
        };
        let members = cat
            .services
            .get(service)
            .ok_or_else(|| CoreError::NotFound(format!("unknown feature service '{service}'")))?;
        for r in refs {
            let (v, f) = split_ref(r)?;
            // A router computes the service's on-demand views itself, so it also asks for
            // their stored inputs on the caller's behalf.
            let ok = members.iter().any(|(vi, mf)| {
                (mf == f && cat.views[*vi].name == v)
                    || cat.views[*vi].on_demand.as_ref().is_some_and(|od| {
                        od.sources
                            .iter()
                            .any(|(si, sf)| sf == f && cat.views[*si].name == v)
                    })
            });
            if !ok {
                return Err(CoreError::PermissionDenied(format!(
                    "feature '{r}' is not part of feature service '{service}'"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_outside_scope_are_denied_alike_existing_or_not() {
        let cat = Catalog::default();
        let scope = Scope {
            views: ["user_profile".to_string()].into_iter().collect(),
            ..Scope::default()
        };
        assert!(scope
            .check(&cat, &Selector::Refs(vec!["user_profile:f000".into()]))
            .is_ok());
        for r in ["secret:f000", "no_such_view:x", "nocolon"] {
            let err = scope
                .check(&cat, &Selector::Refs(vec![r.into()]))
                .unwrap_err();
            assert!(
                matches!(err, CoreError::PermissionDenied(_)),
                "{r}: {err:?}"
            );
        }
        let err = scope
            .check(&cat, &Selector::Service("unknown".into()))
            .unwrap_err();
        assert!(matches!(err, CoreError::PermissionDenied(_)));
        let all = Scope {
            all: true,
            ..Scope::default()
        };
        assert!(all.check(&cat, &Selector::Service("x".into())).is_ok());
    }
}
