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
    /// Served-feature logging of the request, done when it is encoded.
    log: Option<super::feature_log::LogTag>,
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
        return Ok(Started::Done(p.finish(store, &answer, cfg, caller.log)));
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
        log: caller.log.cloned(),
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
        Ok(self.p.finish(store, &self.answer, cfg, self.log.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::serve;
    use crate::serve::tests::{fixture, NOW};
    use arrow::array::{Array, AsArray, Float32Array, Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Float32Type, Float64Type};
    use std::sync::Arc;

    /// The serving fixture plus a request-time on-demand view over two of its views (one with
    /// a TTL) and a request field.
    fn store_with_odfv() -> (tempfile::TempDir, Store) {
        let (dir, store) = fixture(3, 3);
        let mut spec: serde_json::Value = serde_json::from_str(&store.catalog().spec_json).unwrap();
        spec["on_demand_feature_views"] = serde_json::json!([{
            "name": "od",
            "sources": [{"view": "user_profile", "feature": "f000"},
                        {"view": "fresh", "feature": "score"}],
            "request_fields": [{"name": "x", "dtype": "float64"}],
            "features": [{"name": "y", "dtype": "float32"}, {"name": "s", "dtype": "string"}]
        }]);
        store.apply_registry(&spec.to_string(), false).unwrap();
        (dir, store)
    }

    fn caller() -> Caller<'static> {
        Caller {
            now_us: NOW,
            ..Caller::default()
        }
    }

    const BODY: &str = r#"{"features":["od:y","user_profile:f001","od:s"],
        "entities":{"user_id":[1,2,99],"x":[0.5,1,null]}}"#;

    fn pending(store: &Store, body: &str) -> Box<Pending> {
        match start(
            store,
            Api::FeastHttp,
            body.as_bytes(),
            &ServeConfig::default(),
            caller(),
        ) {
            Ok(Started::Pending(p)) => p,
            Ok(Started::Done(_)) => panic!("expected a pending answer"),
            Err(e) => panic!("{e}"),
        }
    }

    fn output(y: Vec<Option<f32>>, s: Vec<&str>) -> StructArray {
        StructArray::from(vec![
            (
                Arc::new(Field::new("y", DataType::Float32, true)),
                Arc::new(Float32Array::from(y)) as ArrayRef,
            ),
            (
                Arc::new(Field::new("s", DataType::Utf8, true)),
                Arc::new(StringArray::from(s)) as ArrayRef,
            ),
        ])
    }

    #[test]
    #[allow(clippy::float_cmp)] // the fixture's exact values
    fn inputs_are_the_stored_features_and_request_fields_with_nulls_where_not_present() {
        let (_dir, store) = store_with_odfv();
        let p = pending(&store, BODY);
        assert_eq!(p.views(), vec!["od".to_string()]);
        let (names, arrays) = p.inputs(0).unwrap();
        assert_eq!(names, ["f000", "score", "x"]);
        let f000 = arrays[0].as_primitive::<Float32Type>();
        assert!(f000.is_valid(0) && f000.is_valid(1) && f000.is_null(2));
        // user 1's score is fresh, user 2's is past the view's TTL, user 99 has none
        let score = arrays[1].as_primitive::<Float32Type>();
        assert_eq!(score.value(0), 1.5);
        assert!(score.is_null(1) && score.is_null(2));
        let x = arrays[2].as_primitive::<Float64Type>();
        assert_eq!((x.value(0), x.value(1)), (0.5, 1.0));
        assert!(x.is_null(2));
    }

    #[test]
    fn outputs_are_encoded_with_present_and_null_statuses_and_no_request_column() {
        let (_dir, store) = store_with_odfv();
        let mut p = pending(&store, BODY);
        p.set_output(
            0,
            &output(vec![Some(1.0), None, Some(3.0)], vec!["a", "b", "c"]),
        )
        .unwrap();
        let served = p.finish(&store, &ServeConfig::default()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&served.body).unwrap();
        assert_eq!(
            v["metadata"]["feature_names"],
            serde_json::json!(["user_id", "y", "f001", "s"])
        );
        assert_eq!(
            v["results"][1]["values"],
            serde_json::json!([1.0, null, 3.0])
        );
        assert_eq!(
            v["results"][1]["statuses"],
            serde_json::json!(["PRESENT", "NULL_VALUE", "PRESENT"])
        );
        assert_eq!(
            v["results"][3]["values"],
            serde_json::json!(["a", "b", "c"])
        );
        assert_eq!(v["results"][2]["statuses"][2], "NOT_FOUND");
    }

    #[test]
    fn bad_outputs_and_request_data_name_the_column_or_field() {
        let (_dir, store) = store_with_odfv();
        let mut p = pending(&store, BODY);
        let wrong = StructArray::from(vec![(
            Arc::new(Field::new("y", DataType::Float64, true)),
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef,
        )]);
        let e = p.set_output(0, &wrong).unwrap_err();
        assert!(matches!(e, CoreError::Transform(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("column 'y' has type float64 but the registry declares float32"),
            "{e}"
        );
        let e = p
            .set_output(0, &output(vec![Some(1.0)], vec!["a"]))
            .unwrap_err();
        assert!(
            e.to_string().contains("has 1 rows; the request has 3"),
            "{e}"
        );
        let e = p.finish(&store, &ServeConfig::default()).unwrap_err();
        assert!(e.to_string().contains("has no output yet"), "{e}");
        let short = StructArray::from(vec![(
            Arc::new(Field::new("y", DataType::Float32, true)),
            Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef,
        )]);
        let e = p.set_output(0, &short).unwrap_err();
        assert!(e.to_string().contains("has no column 's'"), "{e}");

        let cfg = ServeConfig::default();
        let missing = r#"{"features":["od:y"],"entities":{"user_id":[1]}}"#;
        let e = start(&store, Api::FeastHttp, missing.as_bytes(), &cfg, caller())
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("missing request field 'x' (float64)"),
            "{e}"
        );
        let text = r#"{"features":["od:y"],"entities":{"user_id":[1],"x":["far"]}}"#;
        let e = start(&store, Api::FeastHttp, text.as_bytes(), &cfg, caller())
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("is float64: value #0 is \"far\" (string)"),
            "{e}"
        );
        // the one-call path, which runs no transforms, says so
        let e = serve(&store, Api::FeastHttp, BODY.as_bytes(), &cfg, caller()).unwrap_err();
        assert!(
            e.to_string().contains("on-demand feature views (od)"),
            "{e}"
        );
    }
}
