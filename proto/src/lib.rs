//! Tollgate's shared vocabulary: the gRPC protocols (admin API, config stream, internal Raft
//! transport), the declarative resource model with its validation, and the few helpers both
//! the control plane and the edge must agree on (API key format, config checksums).
//!
//! Invariant: nothing here does I/O; the control plane and the edge share only this crate.

pub mod duration;
pub mod keys;
pub mod model;
pub mod openapi;
pub mod period;
pub mod prom;
pub mod rollup;
pub mod stream;
pub mod tail;
pub mod validate;

/// Generated protobuf and gRPC code (package `tollgate.v1`).
pub mod v1 {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("tollgate.v1");
}

/// OpenTelemetry's OTLP messages (a wire-compatible subset, `proto/opentelemetry/otlp.proto`).
pub mod otlp {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("tollgate.otlp");
}

pub use model::{Document, Kind, ResourceKey, Spec};
pub use validate::{ValidationError, ValidationErrors};
