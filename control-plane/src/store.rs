//! Raft storage on sled: the log store and the state machine, passing openraft's own
//! storage suite (`Suite::test_all`, see the tests below).
//!
//! ```text
//!   sled db (data-dir/raft)
//!   ├── tree "log"   index (u64 big-endian) -> Entry (JSON)
//!   ├── tree "meta"  vote, committed, last_purged (JSON)
//!   └── tree "sm"    the last snapshot: "snapshot_meta" (JSON) + "snapshot_data" (bytes)
//! ```
//!
//! The state machine lives in memory and is made durable by snapshots: on restart it loads
//! the last snapshot and openraft re-applies the committed log after it (it reads the
//! committed index saved by `save_committed`). Snapshots are built every
//! [`SNAPSHOT_EVERY`] entries, after which the log before them is purged.
//!
//! sled is kept behind these two types only, so that another engine can replace it.

// openraft's traits fix the error type (`StorageError`, over 200 bytes); storage calls are
// far from any hot path.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::raft_types::{NodeId, TypeConfig};
use crate::state::{CommandResponse, ConfigState};

/// Entries between two snapshots.
pub const SNAPSHOT_EVERY: u64 = 1000;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::Store, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::Store, ErrorVerb::Write, e)
}

/// Opens the sled database that holds both stores.
pub fn open(path: &std::path::Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .open()
}

/// Builds both stores on one sled database.
pub fn stores(db: &sled::Db) -> Result<(LogStore, StateMachineStore), StorageError<NodeId>> {
    Ok((LogStore::new(db)?, StateMachineStore::new(db)?))
}

// ---------------------------------------------------------------------------------------------
// Log store

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    fn new(db: &sled::Db) -> StorageResult<Self> {
        Ok(Self {
            db: db.clone(),
            log: db.open_tree("log").map_err(read_err)?,
            meta: db.open_tree("meta").map_err(read_err)?,
        })
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> StorageResult<Option<T>> {
        match self.meta.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(read_err),
        }
    }

    async fn put_meta<T: Serialize>(&self, key: &str, value: &T, flush: bool) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        self.meta.insert(key, bytes).map_err(write_err)?;
        if flush {
            self.db.flush_async().await.map_err(write_err)?;
        }
        Ok(())
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_entry(bytes: &[u8]) -> StorageResult<Entry<TypeConfig>> {
    serde_json::from_slice(bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (_, v) = item.map_err(read_err)?;
            let entry = decode_entry(&v)?;
            if !range.contains(&entry.log_id.index) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, v)) => Some(decode_entry(&v)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta("vote", vote, true).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: a lost value only means re-learning it from the leader.
        self.put_meta("committed", &committed, false).await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes =
                serde_json::to_vec(&entry).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        let flushed = self
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(std::io::Error::other);
        let failed = flushed
            .as_ref()
            .err()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(flushed);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.put_meta("last_purged", &log_id, true).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// State machine

/// What a snapshot holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: ConfigState,
}

#[derive(Clone, Debug)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct Inner {
    data: SnapshotData,
    current: Option<StoredSnapshot>,
}

/// The state machine. Cheap to clone: the admin API and the config stream hold clones and
/// read the state through [`StateMachineStore::read`].
#[derive(Clone)]
pub struct StateMachineStore {
    db: sled::Db,
    tree: sled::Tree,
    inner: Arc<RwLock<Inner>>,
    applied: watch::Sender<u64>,
    /// Snapshot builds run beside installs; saves go one at a time and never replace a
    /// newer snapshot with an older one.
    save: Arc<tokio::sync::Mutex<()>>,
    built: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachineStore {
    fn new(db: &sled::Db) -> StorageResult<Self> {
        let tree = db.open_tree("sm").map_err(read_err)?;
        let meta: Option<SnapshotMeta<NodeId, BasicNode>> =
            match tree.get("snapshot_meta").map_err(read_err)? {
                Some(v) => Some(serde_json::from_slice(&v).map_err(read_err)?),
                None => None,
            };
        let current = match (meta, tree.get("snapshot_data").map_err(read_err)?) {
            (Some(meta), Some(data)) => Some(StoredSnapshot {
                meta,
                data: data.to_vec(),
            }),
            _ => None,
        };
        let data = match &current {
            Some(s) => serde_json::from_slice(&s.data).map_err(read_err)?,
            None => SnapshotData::default(),
        };
        let (applied, _) = watch::channel(data.state.version);
        Ok(Self {
            db: db.clone(),
            tree,
            inner: Arc::new(RwLock::new(Inner { data, current })),
            applied,
            save: Arc::default(),
            built: Arc::default(),
        })
    }

    /// Reads the current state. Keep `f` short: writers wait for it.
    pub fn read<T>(&self, f: impl FnOnce(&ConfigState) -> T) -> T {
        let inner = self.inner.read().expect("state lock poisoned");
        f(&inner.data.state)
    }

    /// Watches the config version (the index of the last applied command).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Saves `snapshot` unless a newer one is already saved; returns whether it was saved.
    async fn persist(&self, snapshot: &StoredSnapshot) -> StorageResult<bool> {
        let _one_at_a_time = self.save.lock().await;
        let saved: Option<SnapshotMeta<NodeId, BasicNode>> =
            match self.tree.get("snapshot_meta").map_err(read_err)? {
                Some(v) => Some(serde_json::from_slice(&v).map_err(read_err)?),
                None => None,
            };
        if saved.is_some_and(|m| m.last_log_id > snapshot.meta.last_log_id) {
            return Ok(false);
        }
        let meta = serde_json::to_vec(&snapshot.meta)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let mut batch = sled::Batch::default();
        batch.insert("snapshot_meta", meta);
        batch.insert("snapshot_data", snapshot.data.as_slice());
        self.tree.apply_batch(batch).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let built = self.built.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let snapshot = {
            let inner = self.inner.read().expect("state lock poisoned");
            let data = serde_json::to_vec(&inner.data)
                .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
            let last = inner.data.last_applied;
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{built}", l.leader_id, l.index),
                None => format!("none-{built}"),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last,
                    last_membership: inner.data.membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        if self.persist(&snapshot).await? {
            let mut inner = self.inner.write().expect("state lock poisoned");
            if inner
                .current
                .as_ref()
                .is_none_or(|c| c.meta.last_log_id <= snapshot.meta.last_log_id)
            {
                inner.current = Some(snapshot.clone());
            }
        }
        Ok(Snapshot {
            meta: snapshot.meta,
            snapshot: Box::new(Cursor::new(snapshot.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let inner = self.inner.read().expect("state lock poisoned");
        Ok((inner.data.last_applied, inner.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let version = {
            let mut inner = self.inner.write().expect("state lock poisoned");
            for entry in entries {
                inner.data.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => CommandResponse::default(),
                    EntryPayload::Normal(cmd) => CommandResponse {
                        result: Some(inner.data.state.apply_request(entry.log_id.index, &cmd)),
                    },
                    EntryPayload::Membership(m) => {
                        inner.data.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResponse::default()
                    }
                };
                responses.push(response);
            }
            inner.data.state.version
        };
        self.applied.send_replace(version);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = serde_json::from_slice(&bytes)
            .map_err(|e| io_err(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        self.persist(&stored).await?;
        let version = {
            let mut inner = self.inner.write().expect("state lock poisoned");
            inner.data = SnapshotData {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                state: data.state,
            };
            inner.current = Some(stored);
            inner.data.state.version
        };
        self.applied.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let inner = self.inner.read().expect("state lock poisoned");
        Ok(inner.current.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
        async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(read_err)?;
            let db = open(dir.path()).map_err(read_err)?;
            let (log, sm) = stores(&db)?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite_passes_on_sled() -> StorageResult<()> {
        Suite::test_all(SledBuilder)
    }

    #[tokio::test]
    async fn state_survives_reopen_through_snapshot() -> anyhow::Result<()> {
        use crate::state::{Command, Request};
        let dir = tempfile::tempdir()?;
        {
            let db = open(dir.path())?;
            let (_, mut sm) = stores(&db)?;
            let specs = tollgate_proto::Document::parse("tenants: [{name: acme}]")
                .map_err(anyhow::Error::msg)?
                .into_specs();
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 7),
                payload: EntryPayload::Normal(Request {
                    command: Command::Apply { specs, prune: false },
                    actor: None,
                    at_ms: 0,
                }),
            };
            let out = sm.apply([entry]).await?;
            assert!(matches!(out[0].result, Some(Ok(_))));
            sm.build_snapshot().await?;
        }
        let db = open(dir.path())?;
        let (_, mut sm) = stores(&db)?;
        let (applied, _) = sm.applied_state().await?;
        assert_eq!(applied.map(|l| l.index), Some(7));
        assert_eq!(sm.read(|s| s.resources.len()), 1);
        Ok(())
    }
}
