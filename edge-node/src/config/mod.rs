//! Stage "config": where a config change arrives and becomes what the request path reads.
//! The stream client talks to the control plane, the applier joins and checks what it
//! sends, the snapshot compiles it (off the request path), the shared state swaps it in, and
//! the last-known-good file keeps it across restarts.
//!
//! Owns: the raw resource set, the compiled [`snapshot::Snapshot`] and its swap. May use the
//! phases' and upstreams' compile functions; nothing here runs on the request path except
//! [`state::Shared::snapshot`] (one atomic load).

pub mod cluster_tls;
#[cfg(test)]
mod fuzz;
pub mod lkg;
pub mod resources;
pub mod snapshot;
pub mod state;
pub mod stream;
pub mod sync;
