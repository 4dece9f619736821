//! Per-minute traffic aggregates for the control plane: the call-log thread adds every
//! finished call to its (minute, tenant, service, app, model, status class) row, and the
//! config-stream session reports the rows that changed every [`REPORT_EVERY`]. Values are
//! absolute for this edge and epoch, so a report that is repeated, or lost and resent,
//! changes nothing; a failed report marks its rows to be sent again.
//!
//! Rows older than [`KEEP_MINUTES`] that were reported are forgotten; at most [`MAX_ROWS`]
//! are held (a control plane unreachable for long: calls for new rows are dropped, counted).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tollgate_proto::rollup::{self, Key, Value};
use tollgate_proto::v1;

use crate::observe::calllog::Forward;
use crate::observe::metrics::{status_class, RouteStats, STATUS_CLASSES};
use crate::observe::record::CallRecord;

/// How often changed rows are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Minutes a reported row is kept (a late call may still land in it).
pub const KEEP_MINUTES: u64 = 3;
/// Most rows held; past it, calls for new rows are dropped and counted.
pub const MAX_ROWS: usize = 100_000;

/// One minute of one route and status class, by app and model (empty for a REST call). Found by the route's stats pointer
/// (held here, so it stays unique) rather than by building the row's key per call; the
/// routes of a service are merged into its rows when reported.
#[derive(Debug)]
struct Group {
    stats: Arc<RouteStats>,
    apps: HashMap<(String, String), (Value, bool)>,
}

#[derive(Debug, Default)]
struct Rows {
    groups: HashMap<(u64, usize, u8), Group>,
    held: usize,
}

/// This edge's rollups.
#[derive(Debug)]
pub struct Rollups {
    rows: Mutex<Rows>,
    node_id: String,
    epoch: u64,
    /// Calls not counted because [`MAX_ROWS`] rows were held.
    pub dropped: AtomicU64,
}

impl Rollups {
    pub fn new(node_id: &str) -> Arc<Rollups> {
        Arc::new(Rollups {
            rows: Mutex::default(),
            node_id: node_id.into(),
            epoch: crate::counters::unix_ms() * 1000 + u64::from(std::process::id() % 1000),
            dropped: AtomicU64::new(0),
        })
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, r: &CallRecord) {
        let minute = r.time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60);
        let class = status_class(r.status) as u8;
        let app = r.app.as_deref().unwrap_or_default();
        let ai =
            r.ai.as_ref()
                .map(|cell| cell.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let model = ai.as_ref().map_or("", |u| u.model.as_str());
        let mut rows = self.rows();
        let Rows { groups, held } = &mut *rows;
        let group = groups
            .entry((minute, Arc::as_ptr(&r.stats) as usize, class))
            .or_insert_with(|| Group {
                stats: r.stats.clone(),
                apps: HashMap::new(),
            });
        let found = group
            .apps
            .iter_mut()
            .find(|((a, m), _)| a == app && m == model)
            .map(|(_, row)| row);
        let (value, dirty) = match found {
            Some(row) => row,
            None if *held >= MAX_ROWS => {
                self.dropped.fetch_add(1, Relaxed);
                return;
            }
            None => {
                *held += 1;
                group
                    .apps
                    .entry((app.to_string(), model.to_string()))
                    .or_default()
            }
        };
        value.requests += 1;
        value.latency.add(r.latency.as_secs_f64() * 1e6);
        value.bytes_in += r.bytes_in;
        value.bytes_out += r.bytes_out;
        if let Some(u) = &ai {
            value.input_tokens += u.input_tokens;
            value.output_tokens += u.output_tokens;
            value.cost += u.cost;
        }
        *dirty = true;
    }

    /// The rows changed since the last report (a service's routes merged), marked
    /// reported; old reported rows are forgotten.
    pub fn report(&self, now_ms: u64) -> Vec<v1::Rollup> {
        let now_minute = now_ms / 60_000;
        let mut rows = self.rows();
        let Rows { groups, held } = &mut *rows;
        groups.retain(|(minute, ..), g| {
            let keep = minute + KEEP_MINUTES >= now_minute || g.apps.values().any(|(_, dirty)| *dirty);
            if !keep {
                *held -= g.apps.len();
            }
            keep
        });
        let mut merged: BTreeMap<(u64, Key), (Value, bool)> = BTreeMap::new();
        for ((minute, _, class), g) in groups.iter_mut() {
            let l = &g.stats.labels;
            for ((app, model), (value, dirty)) in g.apps.iter_mut() {
                let key = Key {
                    tenant: l.tenant.to_string(),
                    service: l.service.to_string(),
                    app: app.clone(),
                    model: model.clone(),
                    status_class: STATUS_CLASSES[*class as usize].into(),
                };
                let row = merged.entry((*minute, key)).or_default();
                row.0.merge(value);
                row.1 |= *dirty;
                *dirty = false;
            }
        }
        merged
            .into_iter()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|((minute, key), (value, _))| {
                rollup::to_proto(minute, &key, &value, &self.node_id, self.epoch)
            })
            .collect()
    }

    /// A report that did not reach the control plane: its rows go again next time.
    pub fn unreported(&self, sent: &[v1::Rollup]) {
        let mut rows = self.rows();
        for ((minute, _, class), g) in rows.groups.iter_mut() {
            let l = &g.stats.labels;
            for ((app, model), (_, dirty)) in g.apps.iter_mut() {
                *dirty |= sent.iter().any(|r| {
                    r.minute == *minute
                        && r.status_class == STATUS_CLASSES[*class as usize]
                        && r.app == *app
                        && r.model == *model
                        && *r.service == *l.service
                        && *r.tenant == *l.tenant
                });
            }
        }
    }
}

/// The call-log thread feeds the rollups.
pub struct Feed(pub Arc<Rollups>);

impl Forward for Feed {
    fn forward(&mut self, record: &Arc<CallRecord>) {
        self.0.add(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::testutil::record;

    #[test]
    fn rows_count_calls_and_are_reported_once_until_they_change() {
        let r = Rollups::new("edge-1");
        for status in [200, 200, 503] {
            r.add(&record(status));
        }
        let now = crate::counters::unix_ms();
        let mut report = r.report(now);
        report.sort_by(|a, b| a.status_class.cmp(&b.status_class));
        assert_eq!(report.len(), 2);
        assert_eq!((report[0].status_class.as_str(), report[0].requests), ("2xx", 2));
        assert_eq!((report[1].status_class.as_str(), report[1].requests), ("5xx", 1));
        assert_eq!(report[0].app, "shop");
        assert_eq!(report[0].bytes_out, 84);
        assert!(r.report(now).is_empty(), "nothing changed");
        r.unreported(&report[..1]);
        assert_eq!(r.report(now).len(), 1, "a failed report is sent again");
        r.add(&record(200));
        let again = r.report(now);
        assert_eq!(again[0].requests, 3, "absolute counts, not deltas");
        // Reported rows of old minutes are forgotten.
        assert!(r.report(now + 10 * 60_000).is_empty());
        assert!(r.rows().groups.is_empty());
        assert_eq!(r.rows().held, 0);
    }
}
