//! Request-time on-demand views: the serving path in two halves around the Python transform.
//!
//! [`start`] parses, plans and reads a request as [`super::serve`] does; when the plan has
//! on-demand views it stops before encoding and hands back a [`Pending`] request. The frontend
//! asks it for each view's inputs (Arrow: the stored source features, nulls where not
//! PRESENT, and the request fields), runs the transform once over the whole batch, and gives
//! the output columns back ([`Pending::set_output`]), which become the view's rows of the
//! answer; [`Pending::finish`] then counts and encodes the whole answer as for any request, in
//! every layout (the encoders see the outputs as rows of one more view).

use super::{prepare, Api, Caller, Prepared, ServeConfig, Served};
use crate::arrow_io;
use crate::error::{CoreError, Result};
use crate::query::{Answer, PlanOnDemand};
use crate::store::Store;
use arrow::array::{ArrayRef, StructArray};

/// A request read but not yet encoded: the transforms of its on-demand views are due.
pub struct Pending {
    p: Prepared,
    answer: Answer,
    /// Per on-demand view of the plan, its request fields as Arrow arrays.
    request: Vec<Vec<ArrayRef>>,
    /// Per on-demand view, whether its output was set.
    done: Vec<bool>,
}

/// What [`start`] ends with.
pub enum Started {
    Done(Served),
    Pending(Box<Pending>),
}

/// The serving path up to the transforms: a complete answer when the request has no
/// on-demand view, else the request read and its request fields checked.
pub fn start(
    store: &Store,
    api: Api,
    body: &[u8],
    cfg: &ServeConfig,
    caller: Caller<'_>,
) -> Result<Started> {
    let p = prepare(&store.catalog(), api, body, cfg, caller.scope)?;
    let answer = p.execute(store, caller.now_us, caller.shard)?;
    if p.plan.on_demand.is_empty() {
        return Ok(Started::Done(p.finish(store, &answer, cfg)));
    }
    if api == Api::Cells {
        return Err(CoreError::InvalidArgument(
            "on-demand feature views are answered by the node a request names them to, not \
             through a router's cell requests"
                .into(),
        ));
    }
    let request = p
        .plan
        .on_demand
        .iter()
        .map(|od| {
            let view = &p.plan.views[od.view].def.name;
            od.request
                .iter()
                .map(|(name, dtype)| arrow_io::request_column(&p.entities, name, *dtype, view))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let n = p.plan.on_demand.len();
    Ok(Started::Pending(Box::new(Pending {
        p,
        answer,
        request,
        done: vec![false; n],
    })))
}

impl Pending {
    fn od(&self, k: usize) -> Result<&PlanOnDemand> {
        self.p.plan.on_demand.get(k).ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "the request has {} on-demand views; there is no view #{k}",
                self.p.plan.on_demand.len()
            ))
        })
    }

    /// Names of the request's on-demand views, in the order [`Pending::inputs`] numbers them.
    #[must_use]
    pub fn views(&self) -> Vec<String> {
        self.p
            .plan
            .on_demand
            .iter()
            .map(|od| self.p.plan.views[od.view].def.name.clone())
            .collect()
    }

    #[must_use]
    pub fn num_entities(&self) -> usize {
        self.p.num_entities()
    }

    /// The inputs of on-demand view `k`: column names and arrays, the source features first
    /// (nulls where not PRESENT), then the request fields.
    pub fn inputs(&self, k: usize) -> Result<(Vec<String>, Vec<ArrayRef>)> {
        let od = self.od(k)?;
        let mut arrays = arrow_io::columns_to_arrow(&self.answer, &self.p.plan, &od.inputs)?;
        arrays.extend(self.request[k].iter().cloned());
        let names = od
            .inputs
            .iter()
            .map(|c| c.feature.clone())
            .chain(od.request.iter().map(|(n, _)| n.clone()))
            .collect();
        Ok((names, arrays))
    }

    /// Takes the transform's output of on-demand view `k` (checked against the registry's
    /// output features: every column present, of its type, one row per entity).
    pub fn set_output(&mut self, k: usize, batch: &StructArray) -> Result<()> {
        let view = self.od(k)?.view;
        let def = self.p.plan.views[view].def.clone();
        self.answer.rows[view] = arrow_io::on_demand_rows(&def, batch, self.p.num_entities())?;
        self.done[k] = true;
        Ok(())
    }

    /// Counts and encodes the whole answer once every on-demand view has its output.
    pub fn finish(&self, store: &Store, cfg: &ServeConfig) -> Result<Served> {
        if let Some(k) = self.done.iter().position(|d| !d) {
            return Err(CoreError::Transform(format!(
                "on-demand feature view '{}' has no output yet",
                self.views()[k]
            )));
        }
        Ok(self.p.finish(store, &self.answer, cfg))
    }
}
