//! Traffic rollups, as edges report them, kept in three tiers:
//!
//! ```text
//!  RecordRollups ─> minutes: (minute, key) -> per (edge, epoch) value, replaced by each report
//!      └─ older than the minute retention ─> merged over edges into hours: (hour, key) -> value
//!            └─ older than the hour retention ─> days: (day, key) -> value ─> dropped after the day retention
//! ```
//! A report carries each row's absolute value for its edge and epoch, so a report that is
//! repeated or reordered changes nothing, and an edge that restarts (a new epoch) keeps what
//! it counted before. Every event sits in exactly one tier, so a query sums the buckets that
//! start inside its range over all three (coarser at the far end).
//!
//! Replicated through Raft beside the config but not config: recording moves no version and
//! writes no audit record. The leader stamps each command with its clock and the retention,
//! so every replica compacts alike. Raw call records never come here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_proto::rollup::{Key, Value, STATUS_CLASSES};

/// How long each tier is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub minutes: u64,
    pub hours: u64,
    pub days: u64,
}

impl Retention {
    pub const DEFAULT: Retention = Retention {
        minutes: 24 * 60,
        hours: 30 * 24,
        days: 400,
    };

    /// From durations (`--rollup-minutes 24h` and so on); each at least one of its unit.
    pub fn from_durations(minutes: Duration, hours: Duration, days: Duration) -> Result<Retention, String> {
        let r = Retention {
            minutes: minutes.as_secs() / 60,
            hours: hours.as_secs() / 3600,
            days: days.as_secs() / 86_400,
        };
        if r.minutes == 0 || r.hours == 0 || r.days == 0 {
            return Err(
                "rollup retention: keep minutes for at least 1m, hours for at least 1h, days for at least 1d"
                    .into(),
            );
        }
        Ok(r)
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention::DEFAULT
    }
}

/// One reported row, as a command carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollupRecord {
    pub minute: u64,
    pub key: Key,
    pub value: Value,
    pub node: String,
    pub epoch: u64,
}

/// A query's group: its totals and its requests by status class.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    pub value: Value,
    pub by_class: [u64; 5],
}

/// Most minute rows kept; past it, new rows are ignored (existing ones still update).
pub const MAX_MINUTE_ROWS: usize = 200_000;
/// Most hour and day rows kept, each.
pub const MAX_COARSE_ROWS: usize = 500_000;
/// Most (edge, epoch) sources per minute row.
pub const MAX_SOURCES: usize = 256;

type Source = (String, u64);

/// Every edge's rollups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Rollups {
    minutes: BTreeMap<(u64, Key), BTreeMap<Source, Value>>,
    hours: BTreeMap<(u64, Key), Value>,
    days: BTreeMap<(u64, Key), Value>,
}

/// What a query adds up, and by what.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub from_ms: u64,
    pub to_ms: u64,
    pub tenant: Option<String>,
    pub service: Option<String>,
    pub app: Option<String>,
    pub group_by: GroupBy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupBy {
    #[default]
    Total,
    Tenant,
    Service,
    App,
    Status,
    Model,
    /// By time: the start (Unix ms, zero-padded to sort) of each bucket of this many ms.
    /// Rows of a coarser tier count in the bucket their own start falls in.
    Time(u64),
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "" | "total" => GroupBy::Total,
            "tenant" => GroupBy::Tenant,
            "service" => GroupBy::Service,
            "app" => GroupBy::App,
            "status" => GroupBy::Status,
            "model" => GroupBy::Model,
            "minute" => GroupBy::Time(60_000),
            "hour" => GroupBy::Time(3_600_000),
            "day" => GroupBy::Time(86_400_000),
            _ => return None,
        })
    }

    fn of(self, start_ms: u64, k: &Key) -> String {
        match self {
            GroupBy::Time(bucket) => format!("{:015}", start_ms / bucket * bucket),
            GroupBy::Total => String::new(),
            GroupBy::Tenant => k.tenant.clone(),
            GroupBy::Service => format!("{}/{}", k.tenant, k.service),
            GroupBy::App => format!("{}/{}", k.tenant, k.app),
            GroupBy::Status => k.status_class.clone(),
            GroupBy::Model => k.model.clone(),
        }
    }
}

impl Query {
    fn matches(&self, k: &Key) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.tenant, &k.tenant) && is(&self.service, &k.service) && is(&self.app, &k.app)
    }

    fn covers(&self, start_ms: u64) -> bool {
        start_ms >= self.from_ms && start_ms < self.to_ms
    }
}

impl Rollups {
    /// Records `rows` (absolute values per source) at the leader's `now_ms`, then compacts.
    /// Rows for a minute already folded into hours, or in the future, are ignored.
    pub fn record(&mut self, now_ms: u64, retention: Retention, rows: &[RollupRecord]) {
        let now_minute = now_ms / 60_000;
        let oldest = now_minute.saturating_sub(retention.minutes);
        for r in rows {
            if r.minute < oldest || r.minute > now_minute + 1 {
                continue;
            }
            let row = (r.minute, r.key.clone());
            if !self.minutes.contains_key(&row) && self.minutes.len() >= MAX_MINUTE_ROWS {
                continue;
            }
            let sources = self.minutes.entry(row).or_default();
            let source = (r.node.clone(), r.epoch);
            if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
                continue;
            }
            sources.insert(source, r.value.clone());
        }
        self.compact(now_ms, retention);
    }

    fn compact(&mut self, now_ms: u64, retention: Retention) {
        let now_minute = now_ms / 60_000;
        let oldest_minute = now_minute.saturating_sub(retention.minutes);
        while let Some(entry) = self.minutes.first_entry() {
            if entry.key().0 >= oldest_minute {
                break;
            }
            let ((minute, key), sources) = entry.remove_entry();
            let hour = self.hours.len();
            let slot = (minute / 60, key);
            if hour >= MAX_COARSE_ROWS && !self.hours.contains_key(&slot) {
                continue;
            }
            let value = self.hours.entry(slot).or_default();
            for v in sources.values() {
                value.merge(v);
            }
        }
        let oldest_hour = (now_minute / 60).saturating_sub(retention.hours);
        while let Some(entry) = self.hours.first_entry() {
            if entry.key().0 >= oldest_hour {
                break;
            }
            let ((hour, key), v) = entry.remove_entry();
            let slot = (hour / 24, key);
            if self.days.len() >= MAX_COARSE_ROWS && !self.days.contains_key(&slot) {
                continue;
            }
            self.days.entry(slot).or_default().merge(&v);
        }
        let oldest_day = (now_minute / 1440).saturating_sub(retention.days);
        while let Some(entry) = self.days.first_entry() {
            if entry.key().0 >= oldest_day {
                break;
            }
            entry.remove();
        }
    }

    /// The totals of every group over the query's range, with its requests by status class
    /// (1xx to 5xx).
    pub fn query(&self, q: &Query) -> BTreeMap<String, Group> {
        let mut out: BTreeMap<String, Group> = BTreeMap::new();
        let mut add = |start_ms: u64, k: &Key, v: &Value| {
            let g = out.entry(q.group_by.of(start_ms, k)).or_default();
            g.value.merge(v);
            if let Some(i) = STATUS_CLASSES.iter().position(|c| *c == k.status_class) {
                g.by_class[i] += v.requests;
            }
        };
        for ((minute, k), sources) in &self.minutes {
            if q.covers(minute * 60_000) && q.matches(k) {
                sources.values().for_each(|v| add(minute * 60_000, k, v));
            }
        }
        for ((hour, k), v) in &self.hours {
            if q.covers(hour * 3_600_000) && q.matches(k) {
                add(hour * 3_600_000, k, v);
            }
        }
        for ((day, k), v) in &self.days {
            if q.covers(day * 86_400_000) && q.matches(k) {
                add(day * 86_400_000, k, v);
            }
        }
        out
    }

    /// Rows held in each tier (minutes, hours, days).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.minutes.len(), self.hours.len(), self.days.len())
    }
}

/// A minute row's values, per (edge, epoch), as stored.
type Sources = Vec<(Source, Value)>;

/// How [`Rollups`] is stored in a snapshot (maps with tuple keys are not JSON objects).
#[derive(Serialize, Deserialize)]
struct Stored {
    minutes: Vec<(u64, Key, Sources)>,
    hours: Vec<(u64, Key, Value)>,
    days: Vec<(u64, Key, Value)>,
}

impl From<Rollups> for Stored {
    fn from(r: Rollups) -> Self {
        Stored {
            minutes: r
                .minutes
                .into_iter()
                .map(|((m, k), s)| (m, k, s.into_iter().collect()))
                .collect(),
            hours: r.hours.into_iter().map(|((h, k), v)| (h, k, v)).collect(),
            days: r.days.into_iter().map(|((d, k), v)| (d, k, v)).collect(),
        }
    }
}

impl From<Stored> for Rollups {
    fn from(s: Stored) -> Self {
        Rollups {
            minutes: s
                .minutes
                .into_iter()
                .map(|(m, k, s)| ((m, k), s.into_iter().collect()))
                .collect(),
            hours: s.hours.into_iter().map(|(h, k, v)| ((h, k), v)).collect(),
            days: s.days.into_iter().map(|(d, k, v)| ((d, k), v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn key(service: &str, class: &str) -> Key {
        Key {
            tenant: "acme".into(),
            service: service.into(),
            app: "shop".into(),
            model: String::new(),
            status_class: class.into(),
        }
    }

    fn row(minute: u64, service: &str, class: &str, node: &str, requests: u64) -> RollupRecord {
        let mut value = Value {
            requests,
            ..Value::default()
        };
        for i in 0..requests {
            value.latency.add(1000.0 + i as f64);
        }
        RollupRecord {
            minute,
            key: key(service, class),
            value,
            node: node.into(),
            epoch: 1,
        }
    }

    fn all(from_ms: u64, to_ms: u64, group_by: GroupBy) -> Query {
        Query {
            from_ms,
            to_ms,
            group_by,
            ..Query::default()
        }
    }

    #[test]
    fn time_buckets_sort_and_hold_the_minutes_they_start() {
        let mut r = Rollups::default();
        let now = 6000 * MIN;
        r.record(
            now,
            Retention::DEFAULT,
            &[
                row(5999, "orders", "2xx", "e1", 4),
                row(5999, "orders", "5xx", "e2", 1),
                row(5940, "orders", "2xx", "e1", 2),
                row(5939, "orders", "2xx", "e1", 8),
            ],
        );
        let by_minute = r.query(&all(0, u64::MAX, GroupBy::Time(MIN)));
        let keys: Vec<&String> = by_minute.keys().collect();
        assert_eq!(
            keys,
            [5939, 5940, 5999]
                .map(|m| format!("{:015}", m * MIN))
                .iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            by_minute[&format!("{:015}", 5999 * MIN)].by_class,
            [0, 4, 0, 0, 1]
        );
        let by_hour = r.query(&all(0, u64::MAX, GroupBy::Time(60 * MIN)));
        let hours: Vec<u64> = by_hour.values().map(|g| g.value.requests).collect();
        assert_eq!(hours, [8, 7], "minute 5939 is hour 98, 5940.. hour 99");
        assert_eq!(GroupBy::parse("hour"), Some(GroupBy::Time(3_600_000)));
    }

    #[test]
    fn reports_replace_per_source_and_sum_over_edges() {
        let mut r = Rollups::default();
        let now = 5000 * MIN;
        r.record(now, Retention::DEFAULT, &[row(5000, "orders", "2xx", "e1", 5)]);
        // The same edge again with its newer absolute count; a second edge adds.
        r.record(
            now,
            Retention::DEFAULT,
            &[
                row(5000, "orders", "2xx", "e1", 7),
                row(5000, "orders", "2xx", "e2", 3),
            ],
        );
        r.record(now, Retention::DEFAULT, &[row(5000, "orders", "2xx", "e1", 7)]);
        r.record(now, Retention::DEFAULT, &[row(4999, "orders", "5xx", "e2", 2)]);
        let q = r.query(&all(0, u64::MAX, GroupBy::Status));
        assert_eq!(q["2xx"].value.requests, 10);
        assert_eq!(q["5xx"].value.requests, 2);
        assert_eq!(q["2xx"].value.latency.count(), 10);
        let total = r.query(&all(0, u64::MAX, GroupBy::Total));
        assert_eq!(total[""].value.requests, 12);
        assert_eq!(total[""].by_class, [0, 10, 0, 0, 2]);
        // A range that starts after minute 4999 sees only minute 5000.
        assert_eq!(
            r.query(&all(5000 * MIN, u64::MAX, GroupBy::Total))[""]
                .value
                .requests,
            10
        );
        // Future and too-old minutes are ignored.
        r.record(
            now,
            Retention::DEFAULT,
            &[
                row(5005, "orders", "2xx", "e1", 9),
                row(1, "orders", "2xx", "e1", 9),
            ],
        );
        assert_eq!(r.query(&all(0, u64::MAX, GroupBy::Total))[""].value.requests, 12);
    }

    #[test]
    fn old_minutes_fold_into_hours_then_days_then_go() {
        let retention = Retention {
            minutes: 60,
            hours: 48,
            days: 3,
        };
        let mut r = Rollups::default();
        let start = 10 * 1440 * MIN; // day 10, hour 240, minute 14400
        r.record(
            start,
            retention,
            &[
                row(14_400, "orders", "2xx", "e1", 4),
                row(14_400, "orders", "2xx", "e2", 6),
            ],
        );
        r.record(
            start + 30 * MIN,
            retention,
            &[row(14_430, "orders", "2xx", "e1", 1)],
        );
        assert_eq!(r.sizes(), (2, 0, 0));
        // Two hours later both minutes are in hour 240, merged over edges.
        r.record(start + 120 * MIN, retention, &[]);
        assert_eq!(r.sizes(), (0, 1, 0));
        assert_eq!(
            r.query(&all(0, u64::MAX, GroupBy::Service))["acme/orders"]
                .value
                .requests,
            11
        );
        // A late report for a folded minute changes nothing.
        r.record(
            start + 120 * MIN,
            retention,
            &[row(14_400, "orders", "2xx", "e1", 100)],
        );
        assert_eq!(r.query(&all(0, u64::MAX, GroupBy::Total))[""].value.requests, 11);
        // Three days on: in the days tier; five days on: gone.
        r.record(start + 3 * 1440 * MIN, retention, &[]);
        assert_eq!(r.sizes(), (0, 0, 1));
        assert_eq!(
            r.query(&all(0, u64::MAX, GroupBy::Total))[""]
                .value
                .latency
                .count(),
            11
        );
        r.record(start + 5 * 1440 * MIN, retention, &[]);
        assert_eq!(r.sizes(), (0, 0, 0));
    }

    #[test]
    fn snapshots_round_trip_and_filters_apply() {
        let mut r = Rollups::default();
        r.record(
            1000 * MIN,
            Retention::DEFAULT,
            &[
                row(1000, "orders", "2xx", "e1", 2),
                row(1000, "refunds", "4xx", "e1", 1),
            ],
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: Rollups = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let q = Query {
            service: Some("refunds".into()),
            ..all(0, u64::MAX, GroupBy::Service)
        };
        let got = r.query(&q);
        assert_eq!(got.len(), 1);
        assert_eq!(got["acme/refunds"].value.requests, 1);
        assert_eq!(GroupBy::parse("nope"), None);
        assert!(Retention::from_durations(
            Duration::from_secs(30),
            Duration::from_secs(3600),
            Duration::from_secs(86_400)
        )
        .is_err());
    }
}
