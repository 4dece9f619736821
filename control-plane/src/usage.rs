//! Quota usage, as edges report it: for each (quota, key, period), each edge's absolute count
//! per epoch (an edge's run). Reports merge by taking the larger count, so a repeated or
//! reordered report changes nothing; the total is the sum over edges and epochs, so an edge
//! that restarts (a new epoch) keeps what it counted before. Replicated through Raft with the
//! config, but it is not config: recording usage moves no config version and writes no audit
//! record.
//!
//! Only the current and previous period of each quota are kept: a report for period `p`
//! drops that quota's periods before `p - 1`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tollgate_proto::period::Period;
use tollgate_proto::v1::UsageEntry;

/// Most (quota, key, period) rows kept; past it, new rows are ignored (existing ones still
/// count up).
pub const MAX_ROWS: usize = 500_000;
/// Most (edge, epoch) counts kept per row.
pub const MAX_SOURCES: usize = 256;

/// Longest quota id, key or node id accepted.
pub const MAX_FIELD: usize = 512;

type Row = (String, String, u64);

/// Whether a reported count may be recorded at `now_ms` (this node's clock): a quota id, key
/// and node id of sane length, and a period that is the previous, current or next one (a far
/// one would wipe the quota's real periods, see [`Usage::record`]).
pub fn usable(e: &UsageEntry, now_ms: u64) -> bool {
    let fields = [&e.quota, &e.key, &e.node_id]
        .iter()
        .all(|f| !f.is_empty() && f.len() <= MAX_FIELD);
    let period = match Period::of(&e.quota) {
        Some(p @ (Period::Day | Period::Month)) => p,
        _ => return false,
    };
    let current = period.index(now_ms);
    fields && e.period.saturating_add(1) >= current && e.period <= current.saturating_add(1)
}
type Source = (String, u64);

/// One count, as a command carries it and a snapshot stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub quota: String,
    pub key: String,
    pub period: u64,
    pub node: String,
    pub epoch: u64,
    pub count: u64,
}

impl From<UsageEntry> for UsageRecord {
    fn from(e: UsageEntry) -> Self {
        Self {
            quota: e.quota,
            key: e.key,
            period: e.period,
            node: e.node_id,
            epoch: e.epoch,
            count: e.count,
        }
    }
}

/// Every edge's quota counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    rows: BTreeMap<Row, BTreeMap<Source, u64>>,
    /// Bumped by every record that changed something (what the stream pushes on).
    pub changes: u64,
}

impl Usage {
    /// Merges `records` (larger counts win), then forgets periods before the previous one.
    pub fn record(&mut self, records: &[UsageRecord]) {
        let mut changed = false;
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for r in records {
            let p = newest.entry(r.quota.as_str()).or_insert(r.period);
            *p = (*p).max(r.period);
            let row = (r.quota.clone(), r.key.clone(), r.period);
            if !self.rows.contains_key(&row) && self.rows.len() >= MAX_ROWS {
                continue;
            }
            let sources = self.rows.entry(row).or_default();
            let source = (r.node.clone(), r.epoch);
            if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
                continue;
            }
            let count = sources.entry(source).or_insert(0);
            if r.count > *count {
                *count = r.count;
                changed = true;
            }
        }
        for (quota, period) in newest {
            let before = self.rows.len();
            self.rows
                .retain(|(q, _, p), _| q != quota || p.saturating_add(1) >= period);
            changed |= self.rows.len() != before;
        }
        if changed {
            self.changes += 1;
        }
    }

    /// Every count, as the stream carries it.
    pub fn entries(&self) -> Vec<UsageEntry> {
        self.records()
            .map(|r| UsageEntry {
                quota: r.quota,
                key: r.key,
                period: r.period,
                node_id: r.node,
                epoch: r.epoch,
                count: r.count,
            })
            .collect()
    }

    fn records(&self) -> impl Iterator<Item = UsageRecord> + '_ {
        self.rows.iter().flat_map(|((quota, key, period), sources)| {
            sources.iter().map(move |((node, epoch), count)| UsageRecord {
                quota: quota.clone(),
                key: key.clone(),
                period: *period,
                node: node.clone(),
                epoch: *epoch,
                count: *count,
            })
        })
    }

    /// The sum over edges and epochs for one row.
    pub fn total(&self, quota: &str, key: &str, period: u64) -> u64 {
        self.rows
            .get(&(quota.to_string(), key.to_string(), period))
            .map_or(0, |s| s.values().sum())
    }
}

/// Snapshots store the counts as a list of records.
impl Serialize for Usage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.records())
    }
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut usage = Usage::default();
        usage.record(&Vec::<UsageRecord>::deserialize(d)?);
        usage.changes = 0;
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, period: u64, node: &str, epoch: u64, count: u64) -> UsageRecord {
        UsageRecord {
            quota: "day/100/app/t/q".into(),
            key: key.into(),
            period,
            node: node.into(),
            epoch,
            count,
        }
    }

    #[test]
    fn larger_counts_win_and_edges_and_epochs_add_up() {
        let mut u = Usage::default();
        u.record(&[rec("a", 10, "e1", 1, 5), rec("a", 10, "e2", 1, 3)]);
        u.record(&[rec("a", 10, "e1", 1, 4)]);
        assert_eq!(
            u.total("day/100/app/t/q", "a", 10),
            8,
            "a smaller, older report is ignored"
        );
        let changes = u.changes;
        u.record(&[rec("a", 10, "e1", 1, 5)]);
        assert_eq!(u.changes, changes, "a repeated report changes nothing");
        u.record(&[rec("a", 10, "e1", 2, 2)]);
        assert_eq!(
            u.total("day/100/app/t/q", "a", 10),
            10,
            "a restarted edge keeps its past"
        );
    }

    #[test]
    fn only_sane_counts_for_near_periods_are_usable() {
        let now = 1_798_761_599_000; // 2026-12-31T23:59:59Z
        let today = Period::Day.index(now);
        let entry = |quota: &str, key: &str, period: u64| UsageEntry {
            quota: quota.into(),
            key: key.into(),
            period,
            node_id: "e1".into(),
            epoch: 1,
            count: 1,
        };
        assert!(usable(&entry("day/5/app/t/q", "k", today), now));
        assert!(
            usable(&entry("day/5/app/t/q", "k", today + 1), now),
            "a clock a little ahead"
        );
        assert!(usable(&entry("day/5/app/t/q", "k", today - 1), now));
        assert!(
            !usable(&entry("day/5/app/t/q", "k", u64::MAX), now),
            "would wipe the real periods"
        );
        assert!(!usable(&entry("day/5/app/t/q", "k", today - 2), now));
        assert!(!usable(&entry("1000ms/5/app/t/p", "k", 1), now), "not a quota");
        assert!(!usable(
            &entry("day/5/app/t/q", &"k".repeat(MAX_FIELD + 1), today),
            now
        ));
        let month = Period::Month.index(now);
        assert!(usable(&entry("month/5/app/t/q", "k", month + 1), now));
    }

    #[test]
    fn old_periods_go_and_snapshots_round_trip() {
        let mut u = Usage::default();
        u.record(&[rec("a", 10, "e1", 1, 5), rec("b", 11, "e1", 1, 1)]);
        u.record(&[rec("a", 12, "e1", 1, 1)]);
        assert_eq!(u.total("day/100/app/t/q", "a", 10), 0, "two periods back");
        assert_eq!(
            u.total("day/100/app/t/q", "b", 11),
            1,
            "the previous period stays"
        );
        let json = serde_json::to_string(&u).unwrap();
        let back: Usage = serde_json::from_str(&json).unwrap();
        assert_eq!(back.entries(), u.entries());
    }
}
