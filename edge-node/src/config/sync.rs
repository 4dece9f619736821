//! Applying config pushes, without I/O: assembles snapshot chunks, checks base versions and
//! checksums, compiles, and says what to answer. The stream client (`stream.rs`) does the
//! talking; this module decides.
//!
//! ```text
//!  push ──snapshot?──yes──> collect chunk ──last?──no──> Pending
//!    │                                       │yes
//!    no (delta)                              ▼
//!    ├─ base_version != applied ──> Resync{Nack, from 0}   (forces a fresh snapshot)
//!    ▼                                       │
//!  checksum over upserts + removals ──bad──> Resync{Nack, from applied}
//!    ▼ ok
//!  ConfigState ──compile──> error ──> Rejected{Nack}  (old config kept)
//!                      └──> ok ────> Applied{Ack, state, snapshot}
//! ```

use std::sync::Arc;

use tollgate_proto::stream::checksum;
use tollgate_proto::v1;

use crate::config::resources::{ConfigState, ResourceError};
use crate::config::snapshot::Retained;
use crate::config::snapshot::Snapshot;

/// What to do after a push.
#[derive(Debug)]
pub enum Outcome {
    /// A snapshot chunk was stored; nothing to send yet.
    Pending,
    /// The new config compiled: install `snapshot`, persist `state`, send the ACK.
    Applied {
        ack: v1::Ack,
        state: Arc<ConfigState>,
        snapshot: Arc<Snapshot>,
    },
    /// The config is invalid: send the NACK and keep the old config.
    Rejected { nack: v1::Nack },
    /// The stream is out of step (wrong base version, bad checksum, chunks out of order):
    /// send the NACK, then reconnect announcing `from_version`.
    Resync { nack: v1::Nack, from_version: u64 },
}

#[derive(Debug)]
struct PendingSnapshot {
    nonce: String,
    version: u64,
    chunks: u32,
    next_chunk: u32,
    upserts: Vec<v1::Resource>,
    removals: Vec<v1::ResourceKey>,
}

/// The edge's applied config and any snapshot being received.
#[derive(Debug, Default)]
pub struct Applier {
    current: Arc<ConfigState>,
    pending: Option<PendingSnapshot>,
}

fn nack(nonce: &str, version: u64, errors: Vec<ResourceError>) -> v1::Nack {
    v1::Nack {
        nonce: nonce.to_string(),
        version,
        errors: errors.into_iter().map(Into::into).collect(),
    }
}

impl Applier {
    /// Starts from `initial` (the last-known-good config) or from nothing.
    pub fn new(initial: Option<Arc<ConfigState>>) -> Self {
        Self {
            current: initial.unwrap_or_default(),
            pending: None,
        }
    }

    /// The applied config version (0 for none).
    pub fn version(&self) -> u64 {
        self.current.version
    }

    #[cfg(test)]
    pub fn current(&self) -> &Arc<ConfigState> {
        &self.current
    }

    /// Forgets a half-received snapshot (the stream broke).
    pub fn reset_pending(&mut self) {
        self.pending = None;
    }

    pub fn on_push(&mut self, push: v1::ConfigPush, clients: &mut Retained) -> Outcome {
        let next = if push.snapshot {
            match self.collect_chunk(push) {
                Ok(Some(next)) => next,
                Ok(None) => return Outcome::Pending,
                Err(outcome) => return outcome,
            }
        } else {
            // A delta in the middle of a snapshot means the snapshot was abandoned.
            self.pending = None;
            match self.delta(push) {
                Ok(next) => next,
                Err(outcome) => return outcome,
            }
        };
        let (nonce, state) = next;
        match Snapshot::compile(&state, clients) {
            Ok(snapshot) => {
                let state = Arc::new(state);
                self.current = state.clone();
                Outcome::Applied {
                    ack: v1::Ack {
                        nonce,
                        version: state.version,
                    },
                    state,
                    snapshot: Arc::new(snapshot),
                }
            }
            Err(errors) => Outcome::Rejected {
                nack: nack(&nonce, state.version, errors),
            },
        }
    }

    /// Stores a chunk; returns the assembled config after the last one.
    fn collect_chunk(&mut self, push: v1::ConfigPush) -> Result<Option<(String, ConfigState)>, Outcome> {
        let chunks = push.chunks.max(1);
        if push.chunk == 0 {
            self.pending = Some(PendingSnapshot {
                nonce: push.nonce.clone(),
                version: push.version,
                chunks,
                next_chunk: 0,
                upserts: Vec::new(),
                removals: Vec::new(),
            });
        }
        let in_step = self.pending.as_ref().is_some_and(|p| {
            p.nonce == push.nonce
                && p.version == push.version
                && p.chunks == chunks
                && p.next_chunk == push.chunk
        });
        if !in_step {
            self.pending = None;
            let msg = format!(
                "snapshot chunk {} of {} (nonce {}) arrived out of order",
                push.chunk, chunks, push.nonce
            );
            return Err(Outcome::Resync {
                nack: nack(&push.nonce, push.version, vec![ResourceError::push(msg)]),
                from_version: 0,
            });
        }
        let pending = self.pending.as_mut().expect("checked above");
        pending.upserts.extend(push.upserts);
        pending.removals.extend(push.removals);
        pending.next_chunk += 1;
        if pending.next_chunk < pending.chunks {
            return Ok(None);
        }
        let p = self.pending.take().expect("checked above");
        self.verify(&p.nonce, p.version, &p.upserts, &p.removals, &push.checksum)?;
        // A snapshot replaces everything; removals in it have nothing to remove.
        match ConfigState::from_resources(p.version, p.upserts) {
            Ok(state) => Ok(Some((p.nonce, state))),
            Err(errors) => Err(Outcome::Rejected {
                nack: nack(&p.nonce, p.version, errors),
            }),
        }
    }

    fn delta(&self, push: v1::ConfigPush) -> Result<(String, ConfigState), Outcome> {
        if push.base_version != self.current.version {
            let msg = format!(
                "delta starts from version {} but the edge holds version {}",
                push.base_version, self.current.version
            );
            return Err(Outcome::Resync {
                nack: nack(&push.nonce, push.version, vec![ResourceError::push(msg)]),
                from_version: 0,
            });
        }
        self.verify(
            &push.nonce,
            push.version,
            &push.upserts,
            &push.removals,
            &push.checksum,
        )?;
        match self
            .current
            .with_delta(push.version, push.upserts, &push.removals)
        {
            Ok(state) => Ok((push.nonce, state)),
            Err(errors) => Err(Outcome::Rejected {
                nack: nack(&push.nonce, push.version, errors),
            }),
        }
    }

    fn verify(
        &self,
        nonce: &str,
        version: u64,
        upserts: &[v1::Resource],
        removals: &[v1::ResourceKey],
        want: &str,
    ) -> Result<(), Outcome> {
        let got = checksum(upserts, removals);
        if got.eq_ignore_ascii_case(want) {
            return Ok(());
        }
        let msg = format!("checksum mismatch: push says {want:?}, content hashes to {got}");
        Err(Outcome::Resync {
            nack: nack(nonce, version, vec![ResourceError::push(msg)]),
            from_version: self.current.version,
        })
    }
}

#[cfg(test)]
mod tests;
