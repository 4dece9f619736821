//! The call log: call records as JSON lines in `<dir>/calls.jsonl`, written by one thread of
//! its own so the request path never waits on a disk.
//!
//! ```text
//!  request path ──try_send──> bounded queue (full: counted as dropped) ──> writer thread
//!     ─> calls.jsonl ──(size or age reached)──> calls-<unix ms>.jsonl ──(over the total)──> deleted
//!     ─> the rollups (per-minute aggregates for the control plane)
//!     ─> OTLP exporter queue (when an endpoint is set)
//! ```
//! The active file is rotated when it reaches `max_file_bytes` or has been open for
//! `max_age`; rotated files are deleted, oldest first, while the directory holds more than
//! `max_total_bytes`. The writer drains the queue every 10 ms (it is never woken per record)
//! and flushes after every batch it found (and at least once a second), so a record is on
//! disk within about 10 ms of its answer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::observe::record::{CallRecord, WallClock};

/// Records waiting to be written; past it, records are dropped and counted (at 100k
/// requests/s the queue holds about 80 drains' worth).
pub const QUEUE: usize = 65_536;
/// How often the writer drains the queue.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

const ACTIVE: &str = "calls.jsonl";

/// Where and how much.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_age: Duration,
}

impl LogConfig {
    pub const DEFAULT_FILE_BYTES: u64 = 64 << 20;
    pub const DEFAULT_TOTAL_BYTES: u64 = 1 << 30;
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

    /// The defaults, in `dir`.
    pub fn in_dir(dir: PathBuf) -> Self {
        LogConfig {
            dir,
            max_file_bytes: Self::DEFAULT_FILE_BYTES,
            max_total_bytes: Self::DEFAULT_TOTAL_BYTES,
            max_age: Self::DEFAULT_MAX_AGE,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.max_file_bytes < 4096 {
            return Err("--call-log-file-bytes must be at least 4096".into());
        }
        if self.max_total_bytes < 2 * self.max_file_bytes {
            return Err("--call-log-total-bytes must be at least twice --call-log-file-bytes".into());
        }
        if self.max_age < Duration::from_secs(1) {
            return Err("--call-log-max-age must be at least 1s".into());
        }
        Ok(())
    }
}

/// What the writer did, for `/metrics`.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub written: AtomicU64,
    /// Dropped because the queue was full (the writer fell behind).
    pub dropped: AtomicU64,
    /// Lost to a write error (a full disk, say).
    pub failed: AtomicU64,
    pub rotations: AtomicU64,
}

/// Where finished records go next, after the file.
pub trait Forward: Send + 'static {
    fn forward(&mut self, record: &Arc<CallRecord>);
}

/// Starts the writer thread; the returned sender is the request path's end of the queue.
pub fn spawn(
    cfg: Option<LogConfig>,
    mut next: Vec<Box<dyn Forward>>,
    counters: Arc<LogCounters>,
) -> io::Result<SyncSender<Arc<CallRecord>>> {
    let mut file = match cfg {
        Some(cfg) => Some(Rotating::open(cfg)?),
        None => None,
    };
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("call-log".into())
        .spawn(move || write_loop(rx, file.as_mut(), &mut next, &counters))?;
    Ok(tx)
}

fn write_loop(
    rx: Receiver<Arc<CallRecord>>,
    mut file: Option<&mut Rotating>,
    next: &mut [Box<dyn Forward>],
    counters: &LogCounters,
) {
    let mut flushed = Instant::now();
    loop {
        // Drained on a timer, never woken per record: a sender that wakes a parked receiver
        // pays a futex call and a context switch on every request (measured: about 40% of
        // the edge's throughput on one core, BENCHMARKS.md).
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(record) => {
                    wrote = true;
                    if let Some(f) = file.as_deref_mut() {
                        match f.write(&record, counters) {
                            Ok(()) => counters.written.fetch_add(1, Relaxed),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot write a call record");
                                counters.failed.fetch_add(1, Relaxed)
                            }
                        };
                    }
                    for n in next.iter_mut() {
                        n.forward(&record);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if let Some(f) = file {
                        let _ = f.out.flush();
                    }
                    return;
                }
            }
        }
        if wrote || flushed.elapsed() >= Duration::from_secs(1) {
            flushed = Instant::now();
            if let Some(f) = file.as_deref_mut() {
                if let Err(e) = f.flush_and_maybe_rotate(counters) {
                    tracing::warn!(error = %e, dir = %f.cfg.dir.display(), "call log: cannot flush or rotate");
                }
            }
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

struct Rotating {
    cfg: LogConfig,
    clock: WallClock,
    line: Vec<u8>,
    out: BufWriter<File>,
    bytes: u64,
    opened: Instant,
}

impl Rotating {
    fn open(cfg: LogConfig) -> io::Result<Rotating> {
        fs::create_dir_all(&cfg.dir)?;
        let path = cfg.dir.join(ACTIVE);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        let r = Rotating {
            cfg,
            clock: WallClock::default(),
            line: Vec::with_capacity(1024),
            out: BufWriter::with_capacity(64 << 10, file),
            bytes,
            opened: Instant::now(),
        };
        r.prune()?;
        Ok(r)
    }

    /// Appends one record; a file that reached its size is rotated at once, so the
    /// directory's bound holds within one line whatever the batch.
    fn write(&mut self, record: &CallRecord, counters: &LogCounters) -> io::Result<()> {
        // Serialized into a reused buffer (serde_json's many small writes are cheap there),
        // then handed to the file's buffer in one piece.
        self.line.clear();
        record.write_json(&mut self.line, &mut self.clock);
        self.out.write_all(&self.line)?;
        self.bytes += self.line.len() as u64;
        if self.bytes >= self.cfg.max_file_bytes {
            self.out.flush()?;
            self.rotate()?;
            counters.rotations.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    fn flush_and_maybe_rotate(&mut self, counters: &LogCounters) -> io::Result<()> {
        self.out.flush()?;
        if self.bytes >= self.cfg.max_file_bytes
            || (self.bytes > 0 && self.opened.elapsed() >= self.cfg.max_age)
        {
            self.rotate()?;
            counters.rotations.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let stamp = crate::counters::unix_ms();
        // Two rotations in one millisecond get distinct names.
        let mut name = format!("calls-{stamp:013}.jsonl");
        let mut n = 0;
        while self.cfg.dir.join(&name).exists() {
            n += 1;
            name = format!("calls-{stamp:013}-{n}.jsonl");
        }
        fs::rename(self.cfg.dir.join(ACTIVE), self.cfg.dir.join(name))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cfg.dir.join(ACTIVE))?;
        self.out = BufWriter::with_capacity(64 << 10, file);
        self.bytes = 0;
        self.opened = Instant::now();
        self.prune()
    }

    /// Deletes rotated files, oldest first, while the directory is over its total.
    fn prune(&self) -> io::Result<()> {
        let mut rotated = rotated_files(&self.cfg.dir)?;
        let mut total: u64 = self.bytes + rotated.iter().map(|(_, len)| len).sum::<u64>();
        rotated.sort();
        for (path, len) in rotated {
            if total <= self.cfg.max_total_bytes {
                break;
            }
            fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

/// `calls-*.jsonl` in `dir`, with their sizes.
fn rotated_files(dir: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("calls-") && name.ends_with(".jsonl") {
            out.push((entry.path(), entry.metadata()?.len()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::testutil::record;

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn dir_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn writes_json_lines_and_keeps_the_directory_under_its_total() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            dir: tmp.path().join("calls"),
            max_file_bytes: 8 << 10,
            max_total_bytes: 32 << 10,
            max_age: Duration::from_secs(3600),
        };
        let counters = Arc::new(LogCounters::default());
        let tx = spawn(Some(cfg.clone()), Vec::new(), counters.clone()).unwrap();
        let mut sent = 0u64;
        for batch in 0..40 {
            for _ in 0..50 {
                tx.send(Arc::new(record(200))).unwrap();
                sent += 1;
            }
            wait_until("the batch written", || counters.written.load(Relaxed) == sent);
            // Bound: the total plus at most one line past a file's limit.
            let bytes = dir_bytes(&cfg.dir);
            assert!(
                bytes <= cfg.max_total_bytes + 1024,
                "batch {batch}: {bytes} bytes on disk"
            );
        }
        assert!(
            counters.rotations.load(Relaxed) > 10,
            "rotated {:?}",
            counters.rotations
        );
        tx.send(Arc::new(record(200))).unwrap();
        wait_until("the last one written", || {
            counters.written.load(Relaxed) == sent + 1
        });
        let text = fs::read_to_string(cfg.dir.join(ACTIVE)).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(line["status"], 200);
        assert_eq!(line["tenant"], "acme");
        assert_eq!(line["key"], "tgk_0123456789ab");
        assert_eq!(line["path"], "/orders/7", "the query is never logged");
        assert!(!text.contains("secret"), "nothing of the query or credential");
        drop(tx);
    }

    #[test]
    fn rotates_by_age() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            dir: tmp.path().to_path_buf(),
            max_file_bytes: 1 << 20,
            max_total_bytes: 4 << 20,
            max_age: Duration::from_secs(1),
        };
        let counters = Arc::new(LogCounters::default());
        let tx = spawn(Some(cfg.clone()), Vec::new(), counters.clone()).unwrap();
        tx.send(Arc::new(record(502))).unwrap();
        wait_until("a rotation by age", || counters.rotations.load(Relaxed) >= 1);
        let rotated = rotated_files(&cfg.dir).unwrap();
        assert_eq!(rotated.len(), 1);
        let text = fs::read_to_string(&rotated[0].0).unwrap();
        assert!(text.contains("\"status\":502"), "{text}");
    }

    #[test]
    fn bad_bounds_are_refused() {
        let mut cfg = LogConfig {
            dir: PathBuf::from("x"),
            max_file_bytes: 1 << 20,
            max_total_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
        };
        assert!(cfg.check().unwrap_err().contains("twice"));
        cfg.max_total_bytes = 2 << 20;
        assert!(cfg.check().is_ok());
        cfg.max_file_bytes = 10;
        assert!(cfg.check().is_err());
    }
}
