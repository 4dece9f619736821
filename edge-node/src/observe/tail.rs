//! Live tail, the edge's half: while a control plane asks for it (a `ConfigPush.tail` with
//! the filters of its `tollgate logs tail` sessions), the call-log thread offers each finished
//! record that matches one filter, as its JSON line, to the config-stream session, which
//! sends them in batches. Nothing is offered while no tail is open (one atomic load per
//! record); a full queue drops lines and counts them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tollgate_proto::tail::{matches, Fields};
use tollgate_proto::v1::TailFilter;

use crate::observe::calllog::Forward;
use crate::observe::record::CallRecord;

/// Lines waiting for the session; past it, dropped and counted.
pub const QUEUE: usize = 4_096;

#[derive(Debug)]
pub struct Tail {
    on: AtomicBool,
    filters: Mutex<Vec<TailFilter>>,
    tx: mpsc::Sender<String>,
    /// The session's end of the queue (one session at a time holds it).
    pub rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
    /// Lines dropped because the session fell behind.
    pub dropped: AtomicU64,
}

impl Tail {
    pub fn new() -> Arc<Tail> {
        let (tx, rx) = mpsc::channel(QUEUE);
        Arc::new(Tail {
            on: AtomicBool::new(false),
            filters: Mutex::default(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
            dropped: AtomicU64::new(0),
        })
    }

    /// The filters the control plane asks for; none turns the tail off.
    pub fn set(&self, filters: Vec<TailFilter>) {
        let on = !filters.is_empty();
        *self.filters.lock().unwrap_or_else(|e| e.into_inner()) = filters;
        self.on.store(on, Relaxed);
    }

    fn offer(&self, r: &CallRecord) {
        if !self.on.load(Relaxed) {
            return;
        }
        let l = &r.stats.labels;
        let fields = Fields {
            tenant: &l.tenant,
            service: &l.service,
            app: r.app.as_deref().unwrap_or_default(),
            status: r.status,
        };
        let wanted = {
            let filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
            filters.iter().any(|f| matches(f, &fields))
        };
        if !wanted {
            return;
        }
        if self.tx.try_send(r.json_line()).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// The call-log thread feeds the tail.
pub struct Feed(pub Arc<Tail>);

impl Forward for Feed {
    fn forward(&mut self, record: &Arc<CallRecord>) {
        self.0.offer(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::testutil::record;

    #[tokio::test]
    async fn offers_only_while_asked_and_only_what_matches() {
        let tail = Tail::new();
        tail.offer(&record(503));
        let five = TailFilter {
            status: "5xx".into(),
            ..TailFilter::default()
        };
        tail.set(vec![five]);
        tail.offer(&record(200));
        tail.offer(&record(502));
        tail.set(Vec::new());
        tail.offer(&record(504));
        let mut rx = tail.rx.lock().await;
        let line: serde_json::Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(line["status"], 502);
        assert!(rx.try_recv().is_err(), "only the 502 while the tail was open");
    }
}
