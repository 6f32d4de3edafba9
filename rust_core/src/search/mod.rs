//! `SearchNearest`: the k entities whose indexed vector is nearest to a query, their distances
//! and the features asked for, in one call (`serve::search`), over the indexes `crate::vector`
//! keeps. docs/vector-search.md has the API.
//!
//! | file | holds |
//! |---|---|
//! | `request.rs` | SearchNearest requests, JSON and protobuf |
//! | `serve.rs` | the one entry point: check, search, fetch features, encode |
//! | `feast.rs` | Feast's `/retrieve-online-documents` onto the same path |

pub mod feast;
pub mod request;
pub mod serve;
