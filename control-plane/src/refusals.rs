//! Refused admin calls in the audit log: a caller with a valid token whose call was refused
//! (no permission, or bad input) leaves a record saying who tried what and why it was
//! refused, next to the writes that went through.
//!
//! Writes refused by the state machine are audited as they apply; these are the calls
//! refused before anything reached Raft, recorded before the caller is answered. Each record is one Raft entry, so a token holder
//! could turn a loop of bad calls into a flood of entries: records go through a token bucket
//! (10 a second, bursts of 20, per node); past it they are counted
//! (`tollgate_cp_audit_refusals_dropped_total`) and logged, not written. Callers without a
//! valid token are never recorded (anyone can send those): they are logged only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::AdminError;

/// Records a second, and the burst the bucket holds.
const RATE: f64 = 10.0;
const BURST: f64 = 20.0;
/// Most bytes of a refusal's message kept.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The token bucket and what it turned away.
#[derive(Debug)]
pub struct Refusals {
    bucket: Mutex<(f64, Instant)>,
    dropped: AtomicU64,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            bucket: Mutex::new((BURST, Instant::now())),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Refusals {
    /// Whether one more record may be written now; counts it as dropped if not.
    pub fn admit(&self, now: Instant) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = *b;
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * RATE).min(BURST);
        if tokens >= 1.0 {
            *b = (tokens - 1.0, now);
            true
        } else {
            *b = (tokens, now);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Records refused but not written.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Whether a refusal is one the audit log keeps: no permission, or bad input.
pub fn is_audited(e: &AdminError) -> bool {
    matches!(
        e,
        AdminError::PermissionDenied { .. }
            | AdminError::InvalidArgument(_)
            | AdminError::InvalidField { .. }
    )
}

/// The refusal's message as recorded: at most [`MAX_MESSAGE_BYTES`], cut at a character.
pub fn message(e: &AdminError) -> String {
    let mut m = e.to_string();
    if m.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    m
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_bucket_admits_a_burst_then_the_rate() {
        let r = Refusals::default();
        let t0 = Instant::now();
        let admitted = (0..50).filter(|_| r.admit(t0)).count();
        assert_eq!(admitted, BURST as usize);
        assert_eq!(r.dropped(), 50 - BURST as u64);
        // A second later, ten more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..50).filter(|_| r.admit(t1)).count(), RATE as usize);
    }

    #[test]
    fn only_permission_and_input_refusals_are_audited_and_messages_are_bounded() {
        assert!(is_audited(&AdminError::InvalidArgument("bad".into())));
        assert!(is_audited(&AdminError::PermissionDenied {
            who: "a viewer token".into(),
            what: "apply".into()
        }));
        assert!(!is_audited(&AdminError::Unauthenticated("invalid token")));
        assert!(!is_audited(&AdminError::NotApplied("leadership changed")));
        let long = AdminError::InvalidArgument("é".repeat(1000));
        let m = message(&long);
        assert!(
            m.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8() && m.ends_with('…'),
            "{}",
            m.len()
        );
    }
}
