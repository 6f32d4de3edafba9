//! Feature and join-key data types, as named in `features.yaml`.

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};

/// Type of a feature value. Every type is nullable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    String,
    Bytes,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// Fixed-length float32 array (embedding); the length is the feature's `dim`.
    Float32Array,
}

impl DType {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "bool" => Self::Bool,
            "int32" => Self::Int32,
            "int64" => Self::Int64,
            "float32" => Self::Float32,
            "float64" => Self::Float64,
            "string" => Self::String,
            "bytes" => Self::Bytes,
            "timestamp" => Self::Timestamp,
            "float32_array" => Self::Float32Array,
            other => {
                return Err(CoreError::InvalidArgument(format!(
                    "unknown feature type '{other}'"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
            Self::String => "string",
            Self::Bytes => "bytes",
            Self::Timestamp => "timestamp",
            Self::Float32Array => "float32_array",
        }
    }

    /// Bytes the value takes in a row's fixed area. Variable-length types store a u32 end offset
    /// into the row's variable area there.
    pub fn fixed_width(self, dim: u32) -> u32 {
        match self {
            Self::Bool => 1,
            Self::Int32 | Self::Float32 | Self::String | Self::Bytes => 4,
            Self::Int64 | Self::Float64 | Self::Timestamp => 8,
            Self::Float32Array => 4 * dim,
        }
    }

    pub fn is_var(self) -> bool {
        matches!(self, Self::String | Self::Bytes)
    }

    /// Numeric and bool features can be served in the dense float32 layout.
    pub fn is_dense_compatible(self) -> bool {
        matches!(
            self,
            Self::Bool | Self::Int32 | Self::Int64 | Self::Float32 | Self::Float64
        )
    }
}

/// Type of a join key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Int32,
    Int64,
    String,
    Bytes,
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::String => "string",
            Self::Bytes => "bytes",
        }
    }
}

/// Answer status of one value; the numbers are Feast's `FieldStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Present = 1,
    NullValue = 2,
    NotFound = 3,
    OutsideMaxAge = 4,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Present => "PRESENT",
            Self::NullValue => "NULL_VALUE",
            Self::NotFound => "NOT_FOUND",
            Self::OutsideMaxAge => "OUTSIDE_MAX_AGE",
        }
    }
}
