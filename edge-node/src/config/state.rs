//! State shared between the config stream (the one writer) and the listeners (readers): the
//! current compiled config, swapped whole. Readers never lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use rustls::sign::CertifiedKey;

use crate::config::snapshot::Snapshot;
use crate::listen::tls::CertSource;

#[derive(Debug, Default)]
pub struct Shared {
    config: ArcSwapOption<Snapshot>,
    /// Whether a config stream to a control plane is open.
    pub connected: AtomicBool,
    /// When the config being served was installed (unix ms).
    pub installed_ms: AtomicU64,
}

impl Shared {
    /// The current config; `None` until a complete one is loaded.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.config.load_full()
    }

    /// Replaces the config for every later request (in-flight ones keep theirs).
    pub fn install(&self, snapshot: Arc<Snapshot>) {
        self.config.store(Some(snapshot));
        self.installed_ms.store(crate::counters::unix_ms(), Relaxed);
    }

    /// The version of the current config, if any.
    pub fn version(&self) -> Option<u64> {
        self.config.load().as_ref().map(|s| s.version)
    }
}

impl CertSource for Shared {
    fn certificate(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        self.config
            .load()
            .as_ref()?
            .certificates
            .lookup(server_name)
            .cloned()
    }
}
