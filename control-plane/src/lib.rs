//! The Tollgate control plane: a Raft-replicated config store (openraft on sled) serving the
//! admin API and the config stream to edge nodes.
//!
//! Invariant: every change to the config goes through the Raft log as one [`state::Command`]
//! and is validated where it is applied, so replicas never diverge and a rejected change
//! writes nothing.

pub mod raft;
pub mod state;
pub mod store;
