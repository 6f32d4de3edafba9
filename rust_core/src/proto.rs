//! Protobuf messages (prost), written by hand from `proto/`.
//!
//! No build script and no `protoc` at build time: the structs below carry the same field
//! numbers, types and oneofs as the `.proto` files and are checked against bytes produced by the
//! official Python protobuf runtime (see the golden tests at the bottom). When a `.proto` file
//! changes, change the struct here in the same commit and regenerate the golden bytes.
//!
//! - [`feast`]: Feast's `feast.types` and `feast.serving` messages
//!   (`proto/feast/types/Value.proto`, `proto/feast/serving/ServingService.proto`).
//! - [`v1`]: our `feature_serving.v1` API (`proto/feature_serving/v1/feature_service.proto`) and
//!   the Kafka ingestion row (`proto/feature_serving/v1/feature_row.proto`).
//!
//! Maps are `BTreeMap`s so that encoding is deterministic (sorted by key, like the Python
//! runtime's `SerializeToString(deterministic=True)`).

// Doc comments here quote protobuf names (`GetOnlineFeaturesRequest`, `FieldStatus`, ...) the
// way the .proto files spell them; backticking every one would only add noise.
#![allow(clippy::doc_markdown)]

/// Feast's messages: package `feast.types` (`Value.proto`) and `feast.serving`
/// (`ServingService.proto`, the messages of `GetOnlineFeatures` and `GetFeastServingInfo`).
pub mod feast {
    use std::collections::BTreeMap;

    /// `google.protobuf.Timestamp` (seconds and nanoseconds since the Unix epoch, UTC).
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    impl Timestamp {
        /// The timestamp of `micros` microseconds since the Unix epoch.
        #[must_use]
        pub fn from_micros(micros: i64) -> Self {
            Self {
                seconds: micros.div_euclid(1_000_000),
                nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
            }
        }

        /// Microseconds since the Unix epoch (sub-microsecond nanos are truncated).
        #[must_use]
        pub fn to_micros(&self) -> i64 {
            self.seconds
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(self.nanos) / 1000)
        }
    }

    // ----- feast.types (Value.proto) --------------------------------------------------------

    /// `feast.types.ValueType.Enum`: the type of a Feast value.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ValueType {
        Invalid = 0,
        Bytes = 1,
        String = 2,
        Int32 = 3,
        Int64 = 4,
        Double = 5,
        Float = 6,
        Bool = 7,
        UnixTimestamp = 8,
        BytesList = 11,
        StringList = 12,
        Int32List = 13,
        Int64List = 14,
        DoubleList = 15,
        FloatList = 16,
        BoolList = 17,
        UnixTimestampList = 18,
        Null = 19,
        Map = 20,
        MapList = 21,
        BytesSet = 22,
        StringSet = 23,
        Int32Set = 24,
        Int64Set = 25,
        DoubleSet = 26,
        FloatSet = 27,
        BoolSet = 28,
        UnixTimestampSet = 29,
        Uuid = 30,
        TimeUuid = 31,
        UuidList = 32,
        TimeUuidList = 33,
    }

    /// `feast.types.Null`: the single value of `Value.null_val`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Null {
        Null = 0,
    }

    /// `feast.types.Value`: a tagged union of every Feast value type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        /// None when no variant is set (Feast treats that as null).
        #[prost(
            oneof = "value::Val",
            tags = "1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, \
                    24, 25, 26, 27, 28, 29, 30, 31, 32, 33"
        )]
        pub val: Option<value::Val>,
    }

    /// Oneof of [`Value`].
    pub mod value {
        /// `feast.types.Value.val`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Val {
            #[prost(bytes = "vec", tag = "1")]
            BytesVal(Vec<u8>),
            #[prost(string, tag = "2")]
            StringVal(String),
            #[prost(int32, tag = "3")]
            Int32Val(i32),
            #[prost(int64, tag = "4")]
            Int64Val(i64),
            #[prost(double, tag = "5")]
            DoubleVal(f64),
            #[prost(float, tag = "6")]
            FloatVal(f32),
            #[prost(bool, tag = "7")]
            BoolVal(bool),
            /// Seconds since the Unix epoch.
            #[prost(int64, tag = "8")]
            UnixTimestampVal(i64),
            #[prost(message, tag = "11")]
            BytesListVal(super::BytesList),
            #[prost(message, tag = "12")]
            StringListVal(super::StringList),
            #[prost(message, tag = "13")]
            Int32ListVal(super::Int32List),
            #[prost(message, tag = "14")]
            Int64ListVal(super::Int64List),
            #[prost(message, tag = "15")]
            DoubleListVal(super::DoubleList),
            #[prost(message, tag = "16")]
            FloatListVal(super::FloatList),
            #[prost(message, tag = "17")]
            BoolListVal(super::BoolList),
            #[prost(message, tag = "18")]
            UnixTimestampListVal(super::Int64List),
            /// Always `Null::Null` (0).
            #[prost(enumeration = "super::Null", tag = "19")]
            NullVal(i32),
            #[prost(message, tag = "20")]
            MapVal(super::Map),
            #[prost(message, tag = "21")]
            MapListVal(super::MapList),
            #[prost(message, tag = "22")]
            BytesSetVal(super::BytesSet),
            #[prost(message, tag = "23")]
            StringSetVal(super::StringSet),
            #[prost(message, tag = "24")]
            Int32SetVal(super::Int32Set),
            #[prost(message, tag = "25")]
            Int64SetVal(super::Int64Set),
            #[prost(message, tag = "26")]
            DoubleSetVal(super::DoubleSet),
            #[prost(message, tag = "27")]
            FloatSetVal(super::FloatSet),
            #[prost(message, tag = "28")]
            BoolSetVal(super::BoolSet),
            #[prost(message, tag = "29")]
            UnixTimestampSetVal(super::Int64Set),
            #[prost(string, tag = "30")]
            UuidVal(String),
            #[prost(string, tag = "31")]
            TimeUuidVal(String),
            #[prost(message, tag = "32")]
            UuidListVal(super::StringList),
            #[prost(message, tag = "33")]
            TimeUuidListVal(super::StringList),
        }
    }

    /// Declares `feast.types.<Name> { repeated <type> val = 1; }` list/set messages.
    macro_rules! repeated_val {
        ($($(#[$doc:meta])* $name:ident: [$($kind:tt)+] $ty:ty;)*) => {$(
            $(#[$doc])*
            #[derive(Clone, PartialEq, prost::Message)]
            pub struct $name {
                #[prost($($kind)+, repeated, tag = "1")]
                pub val: Vec<$ty>,
            }
        )*};
    }

    repeated_val! {
        /// `feast.types.BytesList`.
        BytesList: [bytes = "vec"] Vec<u8>;
        /// `feast.types.StringList`.
        StringList: [string] String;
        /// `feast.types.Int32List`.
        Int32List: [int32] i32;
        /// `feast.types.Int64List`.
        Int64List: [int64] i64;
        /// `feast.types.DoubleList`.
        DoubleList: [double] f64;
        /// `feast.types.FloatList`.
        FloatList: [float] f32;
        /// `feast.types.BoolList`.
        BoolList: [bool] bool;
        /// `feast.types.BytesSet`.
        BytesSet: [bytes = "vec"] Vec<u8>;
        /// `feast.types.StringSet`.
        StringSet: [string] String;
        /// `feast.types.Int32Set`.
        Int32Set: [int32] i32;
        /// `feast.types.Int64Set`.
        Int64Set: [int64] i64;
        /// `feast.types.DoubleSet`.
        DoubleSet: [double] f64;
        /// `feast.types.FloatSet`.
        FloatSet: [float] f32;
        /// `feast.types.BoolSet`.
        BoolSet: [bool] bool;
    }

    /// `feast.types.Map`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Map {
        #[prost(btree_map = "string, message", tag = "1")]
        pub val: BTreeMap<String, Value>,
    }

    /// `feast.types.MapList`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MapList {
        #[prost(message, repeated, tag = "1")]
        pub val: Vec<Map>,
    }

    /// `feast.types.RepeatedValue`: one entity column of a `GetOnlineFeaturesRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RepeatedValue {
        #[prost(message, repeated, tag = "1")]
        pub val: Vec<Value>,
    }

    // ----- feast.serving (ServingService.proto) ---------------------------------------------

    /// `feast.serving.FieldStatus`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum FieldStatus {
        Invalid = 0,
        Present = 1,
        NullValue = 2,
        NotFound = 3,
        OutsideMaxAge = 4,
    }

    /// `feast.serving.GetFeastServingInfoRequest` (empty).
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct GetFeastServingInfoRequest {}

    /// `feast.serving.GetFeastServingInfoResponse`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct GetFeastServingInfoResponse {
        /// Feast version of this serving deployment.
        #[prost(string, tag = "1")]
        pub version: String,
    }

    /// `feast.serving.FeatureList`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct FeatureList {
        #[prost(string, repeated, tag = "1")]
        pub val: Vec<String>,
    }

    /// `feast.serving.GetOnlineFeaturesRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetOnlineFeaturesRequest {
        #[prost(oneof = "get_online_features_request::Kind", tags = "1, 2")]
        pub kind: Option<get_online_features_request::Kind>,
        /// Join key name -> one value per entity.
        #[prost(btree_map = "string, message", tag = "3")]
        pub entities: BTreeMap<String, RepeatedValue>,
        #[prost(bool, tag = "4")]
        pub full_feature_names: bool,
        /// On-demand transformation context (not supported by feature-serving).
        #[prost(btree_map = "string, message", tag = "5")]
        pub request_context: BTreeMap<String, RepeatedValue>,
    }

    /// Oneof of [`GetOnlineFeaturesRequest`].
    pub mod get_online_features_request {
        /// `feast.serving.GetOnlineFeaturesRequest.kind`.
        #[derive(Clone, PartialEq, Eq, prost::Oneof)]
        pub enum Kind {
            #[prost(string, tag = "1")]
            FeatureService(String),
            #[prost(message, tag = "2")]
            Features(super::FeatureList),
        }
    }

    /// `feast.serving.GetOnlineFeaturesResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetOnlineFeaturesResponse {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<GetOnlineFeaturesResponseMetadata>,
        /// One per entry of `metadata.feature_names`, same order.
        #[prost(message, repeated, tag = "2")]
        pub results: Vec<get_online_features_response::FeatureVector>,
    }

    /// Nested messages of [`GetOnlineFeaturesResponse`].
    pub mod get_online_features_response {
        /// `feast.serving.GetOnlineFeaturesResponse.FeatureVector`: one column, one entry per
        /// entity.
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FeatureVector {
            #[prost(message, repeated, tag = "1")]
            pub values: Vec<super::Value>,
            #[prost(enumeration = "super::FieldStatus", repeated, tag = "2")]
            pub statuses: Vec<i32>,
            #[prost(message, repeated, tag = "3")]
            pub event_timestamps: Vec<super::Timestamp>,
        }
    }

    /// `feast.serving.GetOnlineFeaturesResponseMetadata`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct GetOnlineFeaturesResponseMetadata {
        #[prost(message, optional, tag = "1")]
        pub feature_names: Option<FeatureList>,
    }
}

/// Our API, package `feature_serving.v1` (`feature_service.proto`, `feature_row.proto`).
pub mod v1 {
    use std::collections::BTreeMap;

    /// `feature_serving.v1.FieldStatus`: same numbers as Feast's `FieldStatus`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum FieldStatus {
        Invalid = 0,
        Present = 1,
        NullValue = 2,
        NotFound = 3,
        OutsideMaxAge = 4,
    }

    /// `feature_serving.v1.DType`: numbers match the `FeatureColumn.values` and
    /// `FeatureValue.value` field numbers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum DType {
        Unspecified = 0,
        Bool = 1,
        Int32 = 2,
        Int64 = 3,
        Float = 4,
        Double = 5,
        String = 6,
        Bytes = 7,
        Timestamp = 8,
        FloatArray = 9,
    }

    /// `feature_serving.v1.Layout`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Layout {
        Columns = 0,
        Dense = 1,
    }

    /// Declares `feature_serving.v1.<Name>Column { repeated <type> values = 1; }` messages.
    macro_rules! column {
        ($($(#[$doc:meta])* $name:ident: [$($kind:tt)+] $ty:ty;)*) => {$(
            $(#[$doc])*
            #[derive(Clone, PartialEq, prost::Message)]
            pub struct $name {
                /// One value per entity.
                #[prost($($kind)+, repeated, tag = "1")]
                pub values: Vec<$ty>,
            }
        )*};
    }

    column! {
        /// `feature_serving.v1.BoolColumn`.
        BoolColumn: [bool] bool;
        /// `feature_serving.v1.Int32Column`.
        Int32Column: [int32] i32;
        /// `feature_serving.v1.Int64Column`.
        Int64Column: [int64] i64;
        /// `feature_serving.v1.FloatColumn`.
        FloatColumn: [float] f32;
        /// `feature_serving.v1.DoubleColumn`.
        DoubleColumn: [double] f64;
        /// `feature_serving.v1.StringColumn`.
        StringColumn: [string] String;
        /// `feature_serving.v1.BytesColumn`.
        BytesColumn: [bytes = "vec"] Vec<u8>;
        /// `feature_serving.v1.TimestampColumn` (unix microseconds).
        TimestampColumn: [int64] i64;
    }

    /// `feature_serving.v1.FloatArrayColumn`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FloatArrayColumn {
        /// Length of every vector.
        #[prost(uint32, tag = "1")]
        pub dim: u32,
        /// `entities * dim` floats, entity-major.
        #[prost(float, repeated, tag = "2")]
        pub values: Vec<f32>,
    }

    /// `feature_serving.v1.FeatureRefs`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct FeatureRefs {
        /// "view:feature" references.
        #[prost(string, repeated, tag = "1")]
        pub refs: Vec<String>,
    }

    /// `feature_serving.v1.EntityColumn`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntityColumn {
        #[prost(oneof = "entity_column::Values", tags = "1, 2, 3, 4")]
        pub values: Option<entity_column::Values>,
    }

    /// Oneof of [`EntityColumn`].
    pub mod entity_column {
        /// `feature_serving.v1.EntityColumn.values`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Values {
            #[prost(message, tag = "1")]
            Int64Values(super::Int64Column),
            #[prost(message, tag = "2")]
            Int32Values(super::Int32Column),
            #[prost(message, tag = "3")]
            StringValues(super::StringColumn),
            #[prost(message, tag = "4")]
            BytesValues(super::BytesColumn),
        }
    }

    /// `feature_serving.v1.RequestColumn`: one request field's values.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RequestColumn {
        #[prost(oneof = "request_column::Values", tags = "1, 2, 3, 4, 5, 6")]
        pub values: Option<request_column::Values>,
    }

    /// Oneof of [`RequestColumn`].
    pub mod request_column {
        /// `feature_serving.v1.RequestColumn.values`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Values {
            #[prost(message, tag = "1")]
            DoubleValues(super::DoubleColumn),
            #[prost(message, tag = "2")]
            Int64Values(super::Int64Column),
            #[prost(message, tag = "3")]
            StringValues(super::StringColumn),
            #[prost(message, tag = "4")]
            BoolValues(super::BoolColumn),
            #[prost(message, tag = "5")]
            FloatValues(super::FloatColumn),
            #[prost(message, tag = "6")]
            Int32Values(super::Int32Column),
        }
    }

    /// `feature_serving.v1.GetFeatureVectorRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetFeatureVectorRequest {
        #[prost(oneof = "get_feature_vector_request::Selector", tags = "1, 2")]
        pub selector: Option<get_feature_vector_request::Selector>,
        /// Join key name -> that key's values, one per entity.
        #[prost(btree_map = "string, message", tag = "3")]
        pub entities: BTreeMap<String, EntityColumn>,
        #[prost(bool, tag = "4")]
        pub include_statuses: bool,
        #[prost(bool, tag = "5")]
        pub include_event_timestamps: bool,
        #[prost(enumeration = "Layout", tag = "6")]
        pub layout: i32,
        /// Request field name -> its values, one per entity.
        #[prost(btree_map = "string, message", tag = "7")]
        pub request_data: BTreeMap<String, RequestColumn>,
    }

    /// Oneof of [`GetFeatureVectorRequest`].
    pub mod get_feature_vector_request {
        /// `feature_serving.v1.GetFeatureVectorRequest.selector`.
        #[derive(Clone, PartialEq, Eq, prost::Oneof)]
        pub enum Selector {
            #[prost(string, tag = "1")]
            FeatureService(String),
            #[prost(message, tag = "2")]
            Features(super::FeatureRefs),
        }
    }

    /// `feature_serving.v1.GetCellsRequest` (internal, router to node): the features a shard
    /// answers for part of a routed request.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetCellsRequest {
        /// `view:feature` references, in the router's column order.
        #[prost(string, repeated, tag = "1")]
        pub refs: Vec<String>,
        #[prost(btree_map = "string, message", tag = "2")]
        pub entities: BTreeMap<String, EntityColumn>,
        /// The feature service the caller asked for, if any: the node checks the caller's
        /// scope against it (and that every reference belongs to it).
        #[prost(string, tag = "3")]
        pub feature_service: String,
    }

    /// `feature_serving.v1.FeatureColumn`: one requested feature, one value per entity.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FeatureColumn {
        #[prost(oneof = "feature_column::Values", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
        pub values: Option<feature_column::Values>,
        /// One `FieldStatus` byte per entity (only with `include_statuses`).
        #[prost(bytes = "vec", tag = "15")]
        pub statuses: Vec<u8>,
        /// Unix microseconds per entity, 0 when no row (only with `include_event_timestamps`).
        #[prost(int64, repeated, tag = "16")]
        pub event_timestamps: Vec<i64>,
    }

    /// Oneof of [`FeatureColumn`].
    pub mod feature_column {
        /// `feature_serving.v1.FeatureColumn.values`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Values {
            #[prost(message, tag = "1")]
            BoolValues(super::BoolColumn),
            #[prost(message, tag = "2")]
            Int32Values(super::Int32Column),
            #[prost(message, tag = "3")]
            Int64Values(super::Int64Column),
            #[prost(message, tag = "4")]
            FloatValues(super::FloatColumn),
            #[prost(message, tag = "5")]
            DoubleValues(super::DoubleColumn),
            #[prost(message, tag = "6")]
            StringValues(super::StringColumn),
            #[prost(message, tag = "7")]
            BytesValues(super::BytesColumn),
            #[prost(message, tag = "8")]
            TimestampValues(super::TimestampColumn),
            #[prost(message, tag = "9")]
            FloatArrayValues(super::FloatArrayColumn),
        }
    }

    /// `feature_serving.v1.DenseMatrix`: `rows x cols` float32, row-major, little-endian.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct DenseMatrix {
        #[prost(uint32, tag = "1")]
        pub rows: u32,
        #[prost(uint32, tag = "2")]
        pub cols: u32,
        /// Little-endian f32, NaN where not PRESENT.
        #[prost(bytes = "vec", tag = "3")]
        pub values: Vec<u8>,
        /// One `FieldStatus` byte per value (only with `include_statuses`).
        #[prost(bytes = "vec", tag = "4")]
        pub statuses: Vec<u8>,
        /// Little-endian i64 unix micros per value (only with `include_event_timestamps`).
        #[prost(bytes = "vec", tag = "5")]
        pub event_timestamps: Vec<u8>,
    }

    /// `feature_serving.v1.GetFeatureVectorResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetFeatureVectorResponse {
        /// The "view:feature" references answered, in request order.
        #[prost(string, repeated, tag = "1")]
        pub feature_names: Vec<String>,
        #[prost(uint32, tag = "2")]
        pub num_entities: u32,
        /// `LAYOUT_COLUMNS`: one column per feature name.
        #[prost(message, repeated, tag = "3")]
        pub columns: Vec<FeatureColumn>,
        /// `LAYOUT_DENSE`: the whole answer as one matrix.
        #[prost(message, optional, tag = "4")]
        pub dense: Option<DenseMatrix>,
    }

    /// `feature_serving.v1.ListFeatureViewsRequest` (empty).
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct ListFeatureViewsRequest {}

    /// `feature_serving.v1.JoinKeyInfo`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct JoinKeyInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(enumeration = "DType", tag = "2")]
        pub dtype: i32,
    }

    /// `feature_serving.v1.FeatureInfo`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct FeatureInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(enumeration = "DType", tag = "2")]
        pub dtype: i32,
        /// Vector length for `DType::FloatArray`, else 0.
        #[prost(uint32, tag = "3")]
        pub dim: u32,
    }

    /// `feature_serving.v1.FeatureViewInfo`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct FeatureViewInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, repeated, tag = "2")]
        pub join_keys: Vec<JoinKeyInfo>,
        #[prost(message, repeated, tag = "3")]
        pub features: Vec<FeatureInfo>,
        /// 0 means no TTL.
        #[prost(uint64, tag = "4")]
        pub ttl_seconds: u64,
    }

    /// `feature_serving.v1.ListFeatureViewsResponse`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct ListFeatureViewsResponse {
        #[prost(message, repeated, tag = "1")]
        pub feature_views: Vec<FeatureViewInfo>,
    }

    /// `feature_serving.v1.ListFeatureServicesRequest` (empty).
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct ListFeatureServicesRequest {}

    /// `feature_serving.v1.FeatureServiceInfo`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct FeatureServiceInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, repeated, tag = "2")]
        pub refs: Vec<String>,
    }

    /// `feature_serving.v1.ListFeatureServicesResponse`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct ListFeatureServicesResponse {
        #[prost(message, repeated, tag = "1")]
        pub feature_services: Vec<FeatureServiceInfo>,
    }

    // ----- feature_row.proto ----------------------------------------------------------------

    /// `feature_serving.v1.FeatureRow`: the value of a Kafka record in protobuf format.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FeatureRow {
        #[prost(btree_map = "string, message", tag = "1")]
        pub join_keys: BTreeMap<String, EntityValue>,
        /// Unix microseconds (UTC).
        #[prost(int64, tag = "2")]
        pub event_timestamp_micros: i64,
        /// Feature name (without view prefix) -> value.
        #[prost(btree_map = "string, message", tag = "3")]
        pub features: BTreeMap<String, FeatureValue>,
        /// Empty when the topic feeds a single view.
        #[prost(string, tag = "4")]
        pub feature_view: String,
    }

    /// `feature_serving.v1.EntityValue`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct EntityValue {
        #[prost(oneof = "entity_value::Value", tags = "1, 2, 3, 4")]
        pub value: Option<entity_value::Value>,
    }

    /// Oneof of [`EntityValue`].
    pub mod entity_value {
        /// `feature_serving.v1.EntityValue.value`.
        #[derive(Clone, PartialEq, Eq, prost::Oneof)]
        pub enum Value {
            #[prost(int64, tag = "1")]
            Int64Value(i64),
            #[prost(int32, tag = "2")]
            Int32Value(i32),
            #[prost(string, tag = "3")]
            StringValue(String),
            #[prost(bytes = "vec", tag = "4")]
            BytesValue(Vec<u8>),
        }
    }

    /// `feature_serving.v1.FloatArray`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FloatArray {
        #[prost(float, repeated, tag = "1")]
        pub values: Vec<f32>,
    }

    /// `feature_serving.v1.Null`: explicit null marker.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct Null {}

    /// `feature_serving.v1.FeatureValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FeatureValue {
        /// None (no variant) is treated like `Null`.
        #[prost(oneof = "feature_value::Value", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 15")]
        pub value: Option<feature_value::Value>,
    }

    /// Oneof of [`FeatureValue`].
    pub mod feature_value {
        /// `feature_serving.v1.FeatureValue.value`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(bool, tag = "1")]
            BoolValue(bool),
            #[prost(int32, tag = "2")]
            Int32Value(i32),
            #[prost(int64, tag = "3")]
            Int64Value(i64),
            #[prost(float, tag = "4")]
            FloatValue(f32),
            #[prost(double, tag = "5")]
            DoubleValue(f64),
            #[prost(string, tag = "6")]
            StringValue(String),
            #[prost(bytes = "vec", tag = "7")]
            BytesValue(Vec<u8>),
            /// Unix microseconds.
            #[prost(int64, tag = "8")]
            TimestampMicrosValue(i64),
            #[prost(message, tag = "9")]
            FloatArrayValue(super::FloatArray),
            #[prost(message, tag = "15")]
            NullValue(super::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Golden-byte tests: the hex strings below were produced by the official Python protobuf
    //! runtime (protobuf 7.36, modules generated from `proto/` by `python -m serving._codegen`)
    //! with `SerializeToString(deterministic=True)` (map entries sorted by key, like our
    //! `BTreeMap`s). Each test checks that prost decodes the bytes to the expected struct and
    //! re-encodes them byte for byte. To regenerate after a .proto change, build the same
    //! messages in Python (one per constant, contents as in the expected structs below) and
    //! print `msg.SerializeToString(deterministic=True).hex()`.

    use super::feast::{self, get_online_features_request, get_online_features_response, value};
    use super::v1::{
        self, entity_column, feature_column, feature_value, get_feature_vector_request,
    };
    use prost::Message;
    use std::collections::BTreeMap;

    const FEAST_REQUEST: &str = concat!(
        "12260a11757365725f70726f66696c653a663030300a11757365725f70726f66696c653a663030311a1c0a07",
        "757365725f696412110a02207b0a0b20fcffffffffffffffff012001",
    );
    const FEAST_REQUEST_SERVICE: &str = concat!(
        "0a0972616e6b65725f76321a140a076974656d5f696412090a071205736b752d311a0f0a07757365725f6964",
        "12040a0220072a0f0a036e6f7712080a06408081c8ac06",
    );
    const FEAST_RESPONSE: &str = concat!(
        "0a110a0f0a07757365725f69640a046630303112100a0220010a022002120201011a001a00121e0a05359a99",
        "99400a03980100120201031a0a088081c8ac0610a0c21e1a00",
    );
    const FEAST_VALUES: &str = concat!(
        "0a040a0200ff0a092900000000000004c00a0238000a0d82010a0a080000803f0000003f0a09ba01060a0161",
        "0a01620a1fa2011c0a080a016a12031201780a100a016b120b18ffffffffffffffffff010a00",
    );
    const V1_REQUEST: &str = concat!(
        "12260a11757365725f70726f66696c653a663030300a11757365725f70726f66696c653a663030311a1b0a07",
        "757365725f696412100a0e0a0c0102fdffffffffffffffff0120013001",
    );
    const V1_REQUEST_SERVICE: &str = concat!(
        "0a0972616e6b65725f76321a140a076974656d5f696412091a070a05736b752d311a100a07757365725f6964",
        "120512030a01052801",
    );
    const V1_RESPONSE_COLUMNS: &str = concat!(
        "0a11757365725f70726f66696c653a663030310a11757365725f70726f66696c653a6e616d650a1075736572",
        "5f70726f66696c653a656d6210021a1c220a0a089a999940000000007a02010382010980c08481f1ba830300",
        "1a1932070a03616e6e0a007a02010282010980c08481f1ba8303011a1f4a14080212100000803e000080bf00",
        "000000000000007a0201048201020203",
    );
    const V1_RESPONSE_DENSE: &str = concat!(
        "0a11757365725f70726f66696c653a663030300a11757365725f70726f66696c653a663030311002223e0802",
        "10021a100000c03f9a9999400000c07f0000c07f2204010103032a2000202110d70d060000202110d70d0600",
        "00000000000000000000000000000000",
    );
    const V1_LIST_VIEWS: &str = concat!(
        "0a340a0c757365725f70726f66696c65120b0a07757365725f696410031a080a046630303010041a090a0365",
        "6d62100918082080a305",
    );
    const V1_LIST_SERVICES: &str = concat!(
        "0a300a0972616e6b65725f76321211757365725f70726f66696c653a663030301210757365725f70726f6669",
        "6c653a656d62",
    );
    const V1_FEATURE_ROW: &str = concat!(
        "0a0d0a07757365725f69641202082a1080c08481f1ba83031a130a03656d62120c4a0a0a080000003f000080",
        "3e1a0d0a0466303030120525333319421a0a0a046630303112027a001a0a0a04666c6167120208001a130a04",
        "7365656e120b40ffffffffffffffffff01220c757365725f70726f66696c65",
    );

    fn unhex(hex: &str) -> Vec<u8> {
        assert!(hex.len().is_multiple_of(2), "odd hex length");
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    /// Decodes `hex` as `M`, compares with `expected`, and checks re-encoding is byte-identical.
    fn check<M: Message + Default + PartialEq>(hex: &str, expected: &M) {
        let bytes = unhex(hex);
        let decoded = M::decode(bytes.as_slice()).expect("decode golden bytes");
        assert_eq!(&decoded, expected, "decoded message differs");
        assert_eq!(
            decoded.encode_to_vec(),
            bytes,
            "re-encoding differs from Python's bytes"
        );
        assert_eq!(
            expected.encode_to_vec(),
            bytes,
            "encoding the expected struct differs"
        );
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn fv(v: value::Val) -> feast::Value {
        feast::Value { val: Some(v) }
    }

    fn column(values: Vec<feast::Value>) -> feast::RepeatedValue {
        feast::RepeatedValue { val: values }
    }

    #[test]
    fn feast_request_with_feature_list() {
        let expected = feast::GetOnlineFeaturesRequest {
            kind: Some(get_online_features_request::Kind::Features(
                feast::FeatureList {
                    val: strings(&["user_profile:f000", "user_profile:f001"]),
                },
            )),
            entities: BTreeMap::from([(
                "user_id".to_owned(),
                column(vec![
                    fv(value::Val::Int64Val(123)),
                    fv(value::Val::Int64Val(-4)),
                ]),
            )]),
            full_feature_names: true,
            request_context: BTreeMap::new(),
        };
        check(FEAST_REQUEST, &expected);
    }

    #[test]
    fn feast_request_with_feature_service() {
        let expected = feast::GetOnlineFeaturesRequest {
            kind: Some(get_online_features_request::Kind::FeatureService(
                "ranker_v2".to_owned(),
            )),
            entities: BTreeMap::from([
                (
                    "user_id".to_owned(),
                    column(vec![fv(value::Val::Int64Val(7))]),
                ),
                (
                    "item_id".to_owned(),
                    column(vec![fv(value::Val::StringVal("sku-1".to_owned()))]),
                ),
            ]),
            full_feature_names: false,
            request_context: BTreeMap::from([(
                "now".to_owned(),
                column(vec![fv(value::Val::UnixTimestampVal(1_704_067_200))]),
            )]),
        };
        check(FEAST_REQUEST_SERVICE, &expected);
    }

    #[test]
    fn feast_response() {
        let present = feast::FieldStatus::Present as i32;
        let expected = feast::GetOnlineFeaturesResponse {
            metadata: Some(feast::GetOnlineFeaturesResponseMetadata {
                feature_names: Some(feast::FeatureList {
                    val: strings(&["user_id", "f001"]),
                }),
            }),
            results: vec![
                get_online_features_response::FeatureVector {
                    values: vec![fv(value::Val::Int64Val(1)), fv(value::Val::Int64Val(2))],
                    statuses: vec![present, present],
                    event_timestamps: vec![feast::Timestamp::default(); 2],
                },
                get_online_features_response::FeatureVector {
                    values: vec![
                        fv(value::Val::FloatVal(4.8)),
                        fv(value::Val::NullVal(feast::Null::Null as i32)),
                    ],
                    statuses: vec![present, feast::FieldStatus::NotFound as i32],
                    event_timestamps: vec![
                        feast::Timestamp {
                            seconds: 1_704_067_200,
                            nanos: 500_000,
                        },
                        feast::Timestamp::default(),
                    ],
                },
            ],
        };
        check(FEAST_RESPONSE, &expected);
    }

    #[test]
    fn feast_value_variants() {
        let expected = feast::RepeatedValue {
            val: vec![
                fv(value::Val::BytesVal(vec![0x00, 0xff])),
                fv(value::Val::DoubleVal(-2.5)),
                fv(value::Val::BoolVal(false)),
                fv(value::Val::FloatListVal(feast::FloatList {
                    val: vec![1.0, 0.5],
                })),
                fv(value::Val::StringSetVal(feast::StringSet {
                    val: strings(&["a", "b"]),
                })),
                fv(value::Val::MapVal(feast::Map {
                    val: BTreeMap::from([
                        ("k".to_owned(), fv(value::Val::Int32Val(-1))),
                        ("j".to_owned(), fv(value::Val::StringVal("x".to_owned()))),
                    ]),
                })),
                feast::Value { val: None },
            ],
        };
        check(FEAST_VALUES, &expected);
    }

    #[test]
    fn v1_request_dense() {
        let expected = v1::GetFeatureVectorRequest {
            selector: Some(get_feature_vector_request::Selector::Features(
                v1::FeatureRefs {
                    refs: strings(&["user_profile:f000", "user_profile:f001"]),
                },
            )),
            entities: BTreeMap::from([(
                "user_id".to_owned(),
                v1::EntityColumn {
                    values: Some(entity_column::Values::Int64Values(v1::Int64Column {
                        values: vec![1, 2, -3],
                    })),
                },
            )]),
            include_statuses: true,
            include_event_timestamps: false,
            layout: v1::Layout::Dense as i32,
            request_data: BTreeMap::new(),
        };
        check(V1_REQUEST, &expected);
    }

    #[test]
    fn v1_request_feature_service() {
        let expected = v1::GetFeatureVectorRequest {
            selector: Some(get_feature_vector_request::Selector::FeatureService(
                "ranker_v2".to_owned(),
            )),
            entities: BTreeMap::from([
                (
                    "user_id".to_owned(),
                    v1::EntityColumn {
                        values: Some(entity_column::Values::Int32Values(v1::Int32Column {
                            values: vec![5],
                        })),
                    },
                ),
                (
                    "item_id".to_owned(),
                    v1::EntityColumn {
                        values: Some(entity_column::Values::StringValues(v1::StringColumn {
                            values: strings(&["sku-1"]),
                        })),
                    },
                ),
            ]),
            include_statuses: false,
            include_event_timestamps: true,
            layout: v1::Layout::Columns as i32,
            request_data: BTreeMap::new(),
        };
        check(V1_REQUEST_SERVICE, &expected);
    }

    #[test]
    fn v1_response_columns() {
        let (present, ts) = (v1::FieldStatus::Present as u8, 1_704_067_200_000_000);
        let expected = v1::GetFeatureVectorResponse {
            feature_names: strings(&["user_profile:f001", "user_profile:name", "user_profile:emb"]),
            num_entities: 2,
            columns: vec![
                v1::FeatureColumn {
                    values: Some(feature_column::Values::FloatValues(v1::FloatColumn {
                        values: vec![4.8, 0.0],
                    })),
                    statuses: vec![present, v1::FieldStatus::NotFound as u8],
                    event_timestamps: vec![ts, 0],
                },
                v1::FeatureColumn {
                    values: Some(feature_column::Values::StringValues(v1::StringColumn {
                        values: strings(&["ann", ""]),
                    })),
                    statuses: vec![present, v1::FieldStatus::NullValue as u8],
                    event_timestamps: vec![ts, 1],
                },
                v1::FeatureColumn {
                    values: Some(feature_column::Values::FloatArrayValues(
                        v1::FloatArrayColumn {
                            dim: 2,
                            values: vec![0.25, -1.0, 0.0, 0.0],
                        },
                    )),
                    statuses: vec![present, v1::FieldStatus::OutsideMaxAge as u8],
                    event_timestamps: vec![2, 3],
                },
            ],
            dense: None,
        };
        check(V1_RESPONSE_COLUMNS, &expected);
    }

    #[test]
    fn v1_response_dense() {
        let values: Vec<u8> = [1.5f32, 4.8, f32::NAN, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let ts = 1_704_067_200_000_000i64;
        let timestamps: Vec<u8> = [ts, ts, 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let expected = v1::GetFeatureVectorResponse {
            feature_names: strings(&["user_profile:f000", "user_profile:f001"]),
            num_entities: 2,
            columns: vec![],
            dense: Some(v1::DenseMatrix {
                rows: 2,
                cols: 2,
                values,
                statuses: vec![1, 1, 3, 3],
                event_timestamps: timestamps,
            }),
        };
        check(V1_RESPONSE_DENSE, &expected);
    }

    #[test]
    fn v1_list_views_and_services() {
        let views = v1::ListFeatureViewsResponse {
            feature_views: vec![v1::FeatureViewInfo {
                name: "user_profile".to_owned(),
                join_keys: vec![v1::JoinKeyInfo {
                    name: "user_id".to_owned(),
                    dtype: v1::DType::Int64 as i32,
                }],
                features: vec![
                    v1::FeatureInfo {
                        name: "f000".to_owned(),
                        dtype: v1::DType::Float as i32,
                        dim: 0,
                    },
                    v1::FeatureInfo {
                        name: "emb".to_owned(),
                        dtype: v1::DType::FloatArray as i32,
                        dim: 8,
                    },
                ],
                ttl_seconds: 86_400,
            }],
        };
        check(V1_LIST_VIEWS, &views);
        let services = v1::ListFeatureServicesResponse {
            feature_services: vec![v1::FeatureServiceInfo {
                name: "ranker_v2".to_owned(),
                refs: strings(&["user_profile:f000", "user_profile:emb"]),
            }],
        };
        check(V1_LIST_SERVICES, &services);
    }

    #[test]
    fn v1_feature_row() {
        let value = |v| v1::FeatureValue { value: Some(v) };
        let expected = v1::FeatureRow {
            join_keys: BTreeMap::from([(
                "user_id".to_owned(),
                v1::EntityValue {
                    value: Some(v1::entity_value::Value::Int64Value(42)),
                },
            )]),
            event_timestamp_micros: 1_704_067_200_000_000,
            features: BTreeMap::from([
                (
                    "f000".to_owned(),
                    value(feature_value::Value::FloatValue(38.3)),
                ),
                (
                    "f001".to_owned(),
                    value(feature_value::Value::NullValue(v1::Null {})),
                ),
                (
                    "emb".to_owned(),
                    value(feature_value::Value::FloatArrayValue(v1::FloatArray {
                        values: vec![0.5, 0.25],
                    })),
                ),
                (
                    "seen".to_owned(),
                    value(feature_value::Value::TimestampMicrosValue(-1)),
                ),
                (
                    "flag".to_owned(),
                    value(feature_value::Value::BoolValue(false)),
                ),
            ]),
            feature_view: "user_profile".to_owned(),
        };
        check(V1_FEATURE_ROW, &expected);
    }

    #[test]
    fn enums_match_feast_numbers() {
        for (ours, theirs) in [
            (v1::FieldStatus::Invalid, feast::FieldStatus::Invalid),
            (v1::FieldStatus::Present, feast::FieldStatus::Present),
            (v1::FieldStatus::NullValue, feast::FieldStatus::NullValue),
            (v1::FieldStatus::NotFound, feast::FieldStatus::NotFound),
            (
                v1::FieldStatus::OutsideMaxAge,
                feast::FieldStatus::OutsideMaxAge,
            ),
        ] {
            assert_eq!(ours as i32, theirs as i32);
        }
    }

    #[test]
    fn timestamp_micros_round_trip() {
        for micros in [0, 1, -1, 1_704_067_200_000_000, -1_500_001] {
            let ts = feast::Timestamp::from_micros(micros);
            assert!((0..1_000_000_000).contains(&ts.nanos));
            assert_eq!(ts.to_micros(), micros);
        }
        let ts = feast::Timestamp::from_micros(-1);
        assert_eq!((ts.seconds, ts.nanos), (-1, 999_999_000));
    }
}
