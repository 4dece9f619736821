//! Live tail, the control plane's half: the `tollgate logs tail` sessions open on this node,
//! the union of their filters (pushed to every edge streaming from this node), and the
//! hand-out of the lines edges send to each session whose filter matches. Sessions on other
//! nodes see these edges through their own node's `TailLogs` call with `local` set.
//!
//! ```text
//!  TailLogs ─> subscribe(filter) ─> filters changed ─watch─> each edge session ─> ConfigPush.tail
//!  edge ─EdgeMessage.records─> publish ─(matches)─> session queue ─> the CLI's stream
//! ```
//! A session that reads too slowly loses lines (its queue is bounded), never the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tollgate_proto::tail::{matches, Fields};
use tollgate_proto::v1::{TailFilter, TailLogsResponse};

/// Lines waiting for one session.
pub const SESSION_QUEUE: usize = 1_024;

#[derive(Debug)]
struct Session {
    filter: TailFilter,
    tx: mpsc::Sender<TailLogsResponse>,
}

/// This node's tail sessions.
#[derive(Debug)]
pub struct Tails {
    sessions: Mutex<HashMap<u64, Session>>,
    next: AtomicU64,
    filters: watch::Sender<Vec<TailFilter>>,
}

impl Default for Tails {
    fn default() -> Self {
        Tails {
            sessions: Mutex::default(),
            next: AtomicU64::new(1),
            filters: watch::Sender::new(Vec::new()),
        }
    }
}

/// Ends its session when dropped (the CLI went away).
pub struct Subscription {
    tails: Arc<Tails>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tails.remove(self.id);
    }
}

impl Tails {
    /// Opens a session; its lines arrive on the receiver until the subscription is dropped.
    pub fn subscribe(
        self: &Arc<Self>,
        filter: TailFilter,
    ) -> (
        Subscription,
        mpsc::Receiver<TailLogsResponse>,
        mpsc::Sender<TailLogsResponse>,
    ) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let id = self.next.fetch_add(1, Relaxed);
        self.lock().insert(
            id,
            Session {
                filter,
                tx: tx.clone(),
            },
        );
        self.changed();
        (
            Subscription {
                tails: self.clone(),
                id,
            },
            rx,
            tx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.changed();
    }

    fn changed(&self) {
        let filters: Vec<TailFilter> = self.lock().values().map(|s| s.filter.clone()).collect();
        self.filters.send_replace(filters);
    }

    /// The filters edges must apply, as they change.
    pub fn watch(&self) -> watch::Receiver<Vec<TailFilter>> {
        self.filters.subscribe()
    }

    /// Lines an edge sent: each goes to the sessions it matches (unparseable ones nowhere).
    pub fn publish(&self, edge: &str, lines: Vec<String>) {
        let sessions = self.lock();
        if sessions.is_empty() {
            return;
        }
        let mut out: HashMap<u64, Vec<String>> = HashMap::new();
        for line in lines {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let (tenant, service, app) = (s("tenant"), s("service"), s("app"));
            let f = Fields {
                tenant: &tenant,
                service: &service,
                app: &app,
                status: v["status"].as_u64().unwrap_or(0) as u16,
            };
            for (id, session) in sessions.iter() {
                if matches(&session.filter, &f) {
                    out.entry(*id).or_default().push(line.clone());
                }
            }
        }
        for (id, records) in out {
            if let Some(s) = sessions.get(&id) {
                let _ = s.tx.try_send(TailLogsResponse {
                    edge: edge.to_string(),
                    records,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_go_to_the_sessions_they_match_and_filters_follow_sessions() {
        let tails = Arc::new(Tails::default());
        let mut filters = tails.watch();
        let (sub5, mut rx5, _) = tails.subscribe(TailFilter {
            status: "5xx".into(),
            ..TailFilter::default()
        });
        let (_all, mut rx_all, _) = tails.subscribe(TailFilter::default());
        assert_eq!(filters.borrow_and_update().len(), 2);
        tails.publish(
            "edge-1",
            vec![
                r#"{"status":200,"service":"orders"}"#.into(),
                r#"{"status":503,"service":"orders"}"#.into(),
                "not json".into(),
            ],
        );
        assert_eq!(rx5.recv().await.unwrap().records.len(), 1);
        let all = rx_all.recv().await.unwrap();
        assert_eq!((all.edge.as_str(), all.records.len()), ("edge-1", 2));
        drop(sub5);
        assert_eq!(
            filters.borrow_and_update().len(),
            1,
            "a closed session's filter goes"
        );
    }
}
