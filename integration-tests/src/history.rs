//! A concurrent register workload against the control plane, recorded as a history and
//! checked for linearizability (Wing & Gong's algorithm, `todc-utils`' `WGLChecker`).
//!
//! Registers are apps `lin/reg<k>`; a write applies a document setting the app's
//! description to a value never written before, a read gets it (reads are linearizable on
//! any node). Clients pick a node at random for each call. A write whose outcome is unknown
//! (a timeout, a connection lost mid-call) stays open to the end of the history, the way
//! Jepsen and porcupine treat it, and its client continues as a new process. After the run,
//! a final read of every register joins the history, so an acknowledged write that was lost
//! makes the history non-linearizable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::register::{RegisterOperation, RegisterSpecification};
use tollgate_proto::v1::{ApplyRequest, GetRequest};

use crate::{Admin, Sandbox};

/// Registers written and read.
pub const KEYS: usize = 3;

/// How long one call may take before its outcome counts as unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(6);

/// How an operation ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Read(u64),
    Written,
    /// The write may or may not have happened (timeout, connection lost mid-call).
    Unknown,
    /// Definitely not applied (the node could not even be reached), or a read that failed.
    Failed,
}

/// One step of the recorded history.
#[derive(Clone, Debug)]
pub enum Event {
    Call {
        process: usize,
        key: usize,
        op: RegisterOperation<u64>,
    },
    Return {
        process: usize,
        key: usize,
        op: RegisterOperation<u64>,
        outcome: Outcome,
    },
}

/// What a finished workload did.
#[derive(Debug)]
pub struct Summary {
    pub acknowledged: u32,
    pub unknown: u32,
    pub reads: u32,
}

fn register_doc(key: usize, value: u64) -> String {
    format!("apps: [{{name: reg{key}, tenant: lin, description: '{value}'}}]")
}

async fn read(client: &mut Admin, key: usize) -> Result<u64, tonic::Status> {
    let r = client
        .get(GetRequest {
            kind: "app".into(),
            tenant: "lin".into(),
            name: format!("reg{key}"),
        })
        .await?
        .into_inner();
    let spec: serde_json::Value = serde_json::from_str(&r.resources[0].spec_json).unwrap();
    Ok(spec["description"].as_str().map_or(0, |d| d.parse().unwrap()))
}

fn definitely_not_sent(s: &tonic::Status) -> bool {
    let m = format!("{s:?}");
    m.contains("Connection refused") || m.contains("tcp connect error")
}

/// Concurrent clients writing and reading the registers until [`Workload::finish`].
pub struct Workload {
    history: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    next_process: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<(u32, u32, u32)>>,
}

impl Workload {
    /// Creates the registers (tenant `lin`) and starts `clients` clients over every node of
    /// the sandbox.
    pub async fn start(sb: &Sandbox, clients: usize) -> Workload {
        let setup = sb.file(
            "lin.yaml",
            &format!(
                "tenants: [{{name: lin}}]\napps: [{}]",
                (0..KEYS)
                    .map(|k| format!("{{name: reg{k}, tenant: lin}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        sb.cli(0, &["apply", "-f", &setup]).ok();
        let history: Arc<Mutex<Vec<Event>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let next_value = Arc::new(AtomicU64::new(1));
        let next_process = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for c in 0..clients {
            let mut admins = Vec::new();
            for i in 0..sb.nodes.len() {
                admins.push(sb.admin(i).await);
            }
            let (history, stop, next_value, next_process) = (
                history.clone(),
                stop.clone(),
                next_value.clone(),
                next_process.clone(),
            );
            handles.push(tokio::spawn(async move {
                let mut process = next_process.fetch_add(1, Ordering::SeqCst) as usize;
                let mut seed = 0x9e3779b97f4a7c15u64 ^ (c as u64 + 1);
                let mut rand = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let (mut acked, mut unknown, mut reads) = (0u32, 0u32, 0u32);
                while !stop.load(Ordering::SeqCst) {
                    let key = (rand() % KEYS as u64) as usize;
                    let node = (rand() % admins.len() as u64) as usize;
                    let client = &mut admins[node];
                    let record = |e: Event| history.lock().unwrap().push(e);
                    if rand() % 2 == 0 {
                        let value = next_value.fetch_add(1, Ordering::SeqCst);
                        let op = RegisterOperation::Write(value);
                        record(Event::Call { process, key, op });
                        let req = ApplyRequest {
                            document: register_doc(key, value),
                            prune: false,
                        };
                        let outcome = match tokio::time::timeout(CALL_TIMEOUT, client.apply(req)).await {
                            Ok(Ok(_)) => Outcome::Written,
                            Ok(Err(s)) if definitely_not_sent(&s) => Outcome::Failed,
                            _ => Outcome::Unknown,
                        };
                        let was_unknown = matches!(outcome, Outcome::Unknown);
                        acked += u32::from(matches!(outcome, Outcome::Written));
                        unknown += u32::from(was_unknown);
                        record(Event::Return {
                            process,
                            key,
                            op,
                            outcome,
                        });
                        if was_unknown {
                            // The op stays open until the end: continue as a new process.
                            process = next_process.fetch_add(1, Ordering::SeqCst) as usize;
                        }
                    } else {
                        let op = RegisterOperation::Read(None);
                        record(Event::Call { process, key, op });
                        let outcome = match tokio::time::timeout(CALL_TIMEOUT, read(client, key)).await {
                            Ok(Ok(v)) => {
                                reads += 1;
                                Outcome::Read(v)
                            }
                            _ => Outcome::Failed,
                        };
                        record(Event::Return {
                            process,
                            key,
                            op,
                            outcome,
                        });
                    }
                }
                (acked, unknown, reads)
            }));
        }
        Workload {
            history,
            stop,
            next_process,
            clients: handles,
        }
    }

    /// Acknowledged writes so far.
    pub fn acknowledged(&self) -> usize {
        let h = self.history.lock().unwrap();
        h.iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Return {
                        outcome: Outcome::Written,
                        ..
                    }
                )
            })
            .count()
    }

    /// Waits (at most `timeout`) until `n` more writes than now are acknowledged.
    pub async fn more_writes(&self, n: usize, what: &str, timeout: Duration) {
        let (target, deadline) = (self.acknowledged() + n, Instant::now() + timeout);
        while self.acknowledged() < target {
            assert!(
                Instant::now() < deadline,
                "no progress within {timeout:?}: {what} ({} < {target})",
                self.acknowledged()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the clients, reads every register once more through node `via`, and asserts
    /// that each register's history is linearizable.
    pub async fn finish(self, sb: &Sandbox, via: usize) -> Summary {
        self.stop.store(true, Ordering::SeqCst);
        let mut summary = Summary {
            acknowledged: 0,
            unknown: 0,
            reads: 0,
        };
        for c in self.clients {
            let (a, u, r) = c.await.expect("a client panicked");
            summary.acknowledged += a;
            summary.unknown += u;
            summary.reads += r;
        }
        let mut admin = sb.admin(via).await;
        let process = self.next_process.fetch_add(1, Ordering::SeqCst) as usize;
        for key in 0..KEYS {
            let v = read(&mut admin, key).await.expect("final read");
            let mut h = self.history.lock().unwrap();
            let op = RegisterOperation::Read(None);
            h.push(Event::Call { process, key, op });
            h.push(Event::Return {
                process,
                key,
                op,
                outcome: Outcome::Read(v),
            });
        }
        let events = self.history.lock().unwrap().clone();
        for key in 0..KEYS {
            let actions = per_key_history(&events, key);
            let ops = actions.len() / 2;
            assert!(
                is_linearizable(actions),
                "history of reg{key} ({ops} operations) is not linearizable"
            );
        }
        summary
    }
}

fn is_linearizable(actions: Vec<(usize, Action<RegisterOperation<u64>>)>) -> bool {
    WGLChecker::<RegisterSpecification<u64>>::is_linearizable(History::from_actions(actions))
}

/// The history of one register for the checker: failed ops are dropped (reads and writes
/// that surely did nothing), unknown writes get their response at the very end.
fn per_key_history(events: &[Event], key: usize) -> Vec<(usize, Action<RegisterOperation<u64>>)> {
    // Pair each call with the next return of the same process.
    let mut open: std::collections::HashMap<usize, usize> = Default::default();
    let mut keep = vec![false; events.len()];
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Call { process, key: k, .. } if *k == key => {
                open.insert(*process, i);
            }
            Event::Return {
                process,
                key: k,
                outcome,
                ..
            } if *k == key => {
                let call = open.remove(process).expect("return without call");
                let kept = !matches!(outcome, Outcome::Failed);
                keep[call] = kept;
                keep[i] = kept;
            }
            _ => {}
        }
    }
    let mut actions = Vec::new();
    let mut pending_unknown = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        match e {
            Event::Call { process, op, .. } => actions.push((*process, Action::Call(*op))),
            Event::Return {
                process, op, outcome, ..
            } => match outcome {
                Outcome::Read(v) => {
                    actions.push((*process, Action::Response(RegisterOperation::Read(Some(*v)))))
                }
                Outcome::Written => actions.push((*process, Action::Response(*op))),
                Outcome::Unknown => pending_unknown.push((*process, Action::Response(*op))),
                Outcome::Failed => {}
            },
        }
    }
    actions.extend(pending_unknown);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call of `process` on register 0 and its return with `outcome`.
    fn op(process: usize, op: RegisterOperation<u64>, outcome: Outcome) -> [Event; 2] {
        [
            Event::Call { process, key: 0, op },
            Event::Return {
                process,
                key: 0,
                op,
                outcome,
            },
        ]
    }

    /// The check must be able to fail: a write acknowledged before a read began, which the
    /// read does not see, is a lost write.
    #[test]
    fn the_checker_catches_a_lost_write() {
        let write = RegisterOperation::Write(7);
        let read = RegisterOperation::Read(None);
        let events = [op(0, write, Outcome::Written), op(1, read, Outcome::Read(0))].concat();
        assert!(!is_linearizable(per_key_history(&events, 0)));
        // The same read is fine if the write's outcome was unknown (it may never have
        // happened)...
        let mut unknown = events.clone();
        unknown[1] = op(0, write, Outcome::Unknown)[1].clone();
        assert!(is_linearizable(per_key_history(&unknown, 0)));
        // ...or if the read overlapped the write.
        let overlapping = vec![
            events[0].clone(),
            events[2].clone(),
            events[1].clone(),
            events[3].clone(),
        ];
        assert!(is_linearizable(per_key_history(&overlapping, 0)));
        // A stale read after a second acknowledged write is caught too.
        let stale = [
            op(0, write, Outcome::Written),
            op(0, RegisterOperation::Write(8), Outcome::Written),
            op(1, read, Outcome::Read(7)),
        ]
        .concat();
        assert!(!is_linearizable(per_key_history(&stale, 0)));
    }
}
