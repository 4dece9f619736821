//! What every call leaves behind: its metrics, its call record and its trace.
//!
//! ```text
//!  answer ─> Recorded body (counts bytes out) ─ends or is dropped─> Observer::finish
//!     ├─ RouteStats (atomics; /metrics and OTLP metrics read them)
//!     └─ try_send ─> call-log thread ─> calls.jsonl (rotated)
//!                                     ─> rollups ─> RecordRollups to the control plane, every second
//!                                     ─> live tail (while one is open) ─> the config stream
//!                                     ─> otlp task ─> /v1/logs, /v1/traces
//! ```
//! Nothing here waits on the request path: a full queue drops the record and counts it
//! (`tollgate_call_records_dropped_total`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};

pub mod calllog;
pub mod metrics;
pub mod otlp;
pub mod record;
pub mod rollup;
pub mod tail;
#[cfg(test)]
pub mod testutil;
pub mod trace;

use calllog::LogCounters;
use metrics::Registry;
use record::{CallRecord, Phase};
use trace::Sampler;

/// The edge's observers: metrics always, the call log and OTLP export when configured.
#[derive(Debug)]
pub struct Observer {
    pub metrics: Arc<Registry>,
    pub rollups: Arc<rollup::Rollups>,
    pub tail: Arc<tail::Tail>,
    pub log: Arc<LogCounters>,
    pub otlp: Option<Arc<otlp::ExportCounters>>,
    queue: Option<SyncSender<Arc<CallRecord>>>,
    pub sampler: Sampler,
}

impl Observer {
    /// Metrics only: no record leaves the process.
    #[cfg(test)]
    pub fn metrics_only(metrics: Arc<Registry>) -> Arc<Observer> {
        Arc::new(Observer {
            metrics,
            rollups: rollup::Rollups::new("test-edge"),
            tail: tail::Tail::new(),
            log: Arc::default(),
            otlp: None,
            queue: None,
            sampler: Sampler { ratio: 0.0 },
        })
    }

    pub fn new(
        metrics: Arc<Registry>,
        rollups: Arc<rollup::Rollups>,
        tail: Arc<tail::Tail>,
        log: Arc<LogCounters>,
        otlp: Option<Arc<otlp::ExportCounters>>,
        queue: Option<SyncSender<Arc<CallRecord>>>,
        sampler: Sampler,
    ) -> Arc<Observer> {
        Arc::new(Observer {
            metrics,
            rollups,
            tail,
            log,
            otlp,
            queue,
            sampler,
        })
    }

    /// Whether sampled requests time their phases (spans are exported).
    pub fn traces(&self) -> bool {
        self.otlp.is_some()
    }

    /// A finished call: counted, then queued for the log and the exporter.
    pub fn finish(&self, mut record: CallRecord, received: Option<&AtomicU64>, end: Instant) {
        record.latency = end.saturating_duration_since(record.started);
        record.bytes_in = received.map_or(0, |r| r.load(Relaxed));
        record.stats.observe(&record.observation());
        if let Some(cell) = &record.ai {
            let u = cell.lock().unwrap_or_else(|e| e.into_inner());
            let tokens = [
                u.input_tokens,
                u.cached_input_tokens,
                u.output_tokens,
                u.reasoning_tokens,
            ];
            record.stats.ai_usage(tokens, u.cost);
        }
        if let Some(queue) = &self.queue {
            if queue.try_send(Arc::new(record)).is_err() {
                self.log.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// A phase being timed: `None` when the request is not traced (nothing is read).
pub fn phase_start(timing: bool) -> Option<Instant> {
    timing.then(Instant::now)
}

/// Notes a timed phase that started at `start`.
pub fn phase_end(phases: &mut Vec<Phase>, name: &'static str, start: Option<Instant>) {
    if let Some(start) = start {
        phases.push(Phase {
            name,
            start,
            end: Instant::now(),
        });
    }
}

/// An answer's body that counts the bytes it carries and finishes the call record when it
/// ends, fails or is dropped (a client that goes away mid-answer is recorded too).
pub struct Recorded {
    inner: Body,
    bytes_out: u64,
    pending: Option<Box<Pending>>,
}

struct Pending {
    record: CallRecord,
    observer: Arc<Observer>,
    received: Option<Arc<AtomicU64>>,
}

impl Recorded {
    pub fn new(
        inner: Body,
        record: CallRecord,
        observer: Arc<Observer>,
        received: Option<Arc<AtomicU64>>,
    ) -> Recorded {
        let mut body = Recorded {
            inner,
            bytes_out: 0,
            pending: Some(Box::new(Pending {
                record,
                observer,
                received,
            })),
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            let Pending {
                mut record,
                observer,
                received,
            } = *p;
            record.bytes_out = self.bytes_out;
            observer.finish(record, received.as_deref(), Instant::now());
        }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(_) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.finish();
    }
}

/// How calls are observed (`tollgate edge` flags).
#[derive(Clone, Debug)]
pub struct ObserveOptions {
    /// The call log; `None` writes none (`--call-log-dir off`).
    pub call_log: Option<calllog::LogConfig>,
    /// OTLP export; `None` exports nothing.
    pub otlp: Option<otlp::OtlpConfig>,
    /// Fraction of new traces sampled (`--trace-sample-ratio`).
    pub sample_ratio: f64,
}

impl ObserveOptions {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err("--trace-sample-ratio must be between 0 and 1".into());
        }
        if let Some(log) = &self.call_log {
            log.check()?;
        }
        if let Some(otlp) = &self.otlp {
            otlp.check()?;
        }
        Ok(())
    }
}

/// Starts the call-log thread (it also feeds the rollups) and the OTLP exporter the options
/// ask for (within a tokio runtime).
pub fn start(opts: &ObserveOptions, metrics: Arc<Registry>, node_id: &str) -> anyhow::Result<Arc<Observer>> {
    opts.check().map_err(anyhow::Error::msg)?;
    let log = Arc::new(LogCounters::default());
    let rollups = rollup::Rollups::new(node_id);
    let tail = tail::Tail::new();
    let mut next: Vec<Box<dyn calllog::Forward>> = vec![
        Box::new(rollup::Feed(rollups.clone())),
        Box::new(tail::Feed(tail.clone())),
    ];
    let counters = opts.otlp.as_ref().map(|cfg| {
        let counters = Arc::new(otlp::ExportCounters::default());
        next.push(Box::new(otlp::start(
            cfg.clone(),
            metrics.clone(),
            counters.clone(),
        )));
        counters
    });
    let queue = calllog::spawn(opts.call_log.clone(), next, log.clone()).map_err(|e| {
        let dir = opts.call_log.as_ref().map(|c| c.dir.display().to_string());
        anyhow::anyhow!("cannot open the call log in {}: {e}", dir.unwrap_or_default())
    })?;
    Ok(Observer::new(
        metrics,
        rollups,
        tail,
        log,
        counters,
        Some(queue),
        Sampler {
            ratio: opts.sample_ratio,
        },
    ))
}
