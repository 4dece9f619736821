use super::*;

fn window(limit: u64, cluster: bool) -> Limiter {
    Limiter {
        id: Arc::from(format!("1000ms/{limit}/app/t/p")),
        limit,
        period: Period::Window(1000),
        kind: LimiterKind::SlidingWindow { cluster },
    }
}

/// Admits at `now` until the first refusal; returns how many were admitted.
fn fill(c: &Counters, l: &Limiter, key: &str, now: u64, mode: Mode) -> u64 {
    let mut n = 0;
    while c.hit(l, key, now, mode).admitted {
        n += 1;
        assert!(n <= 1_000_000, "never refused");
    }
    n
}

#[test]
fn a_sliding_window_admits_the_limit_and_refusals_use_up_nothing() {
    let c = Counters::default();
    let l = window(10, false);
    let start = 50_000;
    assert_eq!(fill(&c, &l, "a", start, Mode::Cluster), 10);
    // Refused requests were not counted: the estimate is still exactly the limit.
    let d = c.hit(&l, "a", start + 1, Mode::Cluster);
    assert!(!d.admitted);
    assert_eq!((d.remaining, d.limit), (0, 10));
    assert_eq!(d.reset_ms, 999);
    // Another key has its own count.
    assert!(c.hit(&l, "b", start, Mode::Cluster).admitted);
    // Half-way through the next window, half the previous one still counts.
    assert_eq!(fill(&c, &l, "a", start + 1500, Mode::Cluster), 5);
    // Two windows on, nothing does.
    assert_eq!(fill(&c, &l, "a", start + 3000, Mode::Cluster), 10);
}

#[test]
fn peers_counts_share_the_limit_and_a_lost_link_falls_back() {
    let c = Counters::default();
    let l = window(10, true);
    let now = 80_000;
    c.add_peer(&l.id, "a", Period::Window(1000), now / 1000, 6);
    assert_eq!(fill(&c, &l, "a", now, Mode::Cluster), 4, "6 of 10 used by peers");
    // Out of step: this edge alone against a third of the limit (it already admitted 4).
    assert_eq!(fill(&c, &l, "b", now, Mode::LocalShare { edges: 3 }), 3);
    let d = c.hit(&l, "c", now, Mode::Closed);
    assert!(!d.admitted && d.store_unavailable);
    assert_eq!(fill_some(&c, &l, "a", now, Mode::Open, 50), 50, "open admits");
    // A local-scope limit ignores both the peers and the fallback.
    let local = window(3, false);
    c.add_peer(&local.id, "a", Period::Window(1000), now / 1000, 100);
    assert_eq!(fill(&c, &local, "a", now, Mode::Closed), 3);
}

fn fill_some(c: &Counters, l: &Limiter, key: &str, now: u64, mode: Mode, n: u64) -> u64 {
    (0..n).filter(|_| c.hit(l, key, now, mode).admitted).count() as u64
}

#[test]
fn local_counts_are_sent_once_unless_all_are_asked_for() {
    let c = Counters::default();
    let l = window(100, true);
    let now = 120_500;
    for _ in 0..3 {
        c.hit(&l, "a", now, Mode::Cluster);
    }
    let sent = c.local_counts(false);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].key.as_str(), sent[0].window, sent[0].count),
        ("a", 120, 3)
    );
    assert!(c.local_counts(false).is_empty(), "nothing changed since");
    assert_eq!(c.local_counts(true).len(), 1, "a full batch has everything");
    // An undone hit changes the count, so it is sent again.
    c.undo(&l, "a", now);
    assert_eq!(c.local_counts(false)[0].count, 2);
}

#[test]
fn token_buckets_refill_evenly_up_to_their_burst() {
    let c = Counters::default();
    let l = Limiter {
        id: Arc::from("1000ms/10/ip/t/tb"),
        limit: 10,
        period: Period::Window(1000),
        kind: LimiterKind::TokenBucket { burst: 5 },
    };
    let now = 10_000;
    assert_eq!(
        fill(&c, &l, "a", now, Mode::Closed),
        5,
        "the burst, whatever the share"
    );
    let d = c.hit(&l, "a", now, Mode::Cluster);
    assert!(!d.admitted);
    assert_eq!(d.reset_ms, 100, "one token every 100 ms");
    assert_eq!(fill(&c, &l, "a", now + 300, Mode::Cluster), 3);
    assert_eq!(
        fill(&c, &l, "a", now + 60_000, Mode::Cluster),
        5,
        "never more than the burst"
    );
    c.sweep(now + 120_000);
    assert_eq!(c.slots.load(Relaxed), 0, "a full bucket is dropped");
}

#[test]
fn sweeping_drops_passed_windows_and_keys_are_bounded() {
    let c = Counters::default();
    let l = window(1_000_000, false);
    let now = 7_000;
    c.hit(&l, "a", now, Mode::Cluster);
    c.local_counts(false);
    c.sweep(now + 1000);
    assert_eq!(
        c.usage(&l.id, now + 1000).len(),
        1,
        "the previous window still counts"
    );
    c.sweep(now + 2000);
    assert!(c.usage(&l.id, now + 2000).is_empty());
    assert_eq!(c.slots.load(Relaxed), 0);

    // Past MAX_SLOTS, new keys share one overflow slot.
    c.slots.store(MAX_SLOTS as u64, Relaxed);
    for key in ["x", "y", "z"] {
        assert!(c.hit(&l, key, now, Mode::Cluster).admitted);
    }
    let usage = c.usage(&l.id, now);
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].0.as_str(), usage[0].1), (OVERFLOW_KEY, 3.0));
}

#[test]
fn quotas_count_utc_days_and_months_and_are_reported_once() {
    // 2026-12-31T23:59:59Z and a second later.
    let before = 1_798_761_599_000;
    let after = before + 1000;
    assert_eq!(Period::Day.index(after), Period::Day.index(before) + 1);
    assert_eq!(Period::Day.until_end(before), 1000);
    assert_eq!(
        Period::Month.index(before),
        (2026 - 1970) * 12 + 11,
        "December 2026"
    );
    assert_eq!(Period::Month.index(after), (2027 - 1970) * 12, "January 2027");
    assert_eq!(Period::Month.until_end(before), 1000);
    // 2024-02-29 is in February; March starts 24 h later.
    let leap = 1_709_164_800_000;
    assert_eq!(Period::Month.index(leap), (2024 - 1970) * 12 + 1);
    assert_eq!(Period::Month.until_end(leap), 86_400_000);

    let c = Counters::default();
    let q = Limiter {
        id: Arc::from("day/3/app/t/q"),
        limit: 3,
        period: Period::Day,
        kind: LimiterKind::Quota,
    };
    // No sliding: the day's count is all that matters, whatever the peers' mode.
    assert_eq!(fill(&c, &q, "a", before - 5000, Mode::Open), 3);
    assert_eq!(fill(&c, &q, "a", before, Mode::Cluster), 0);
    assert_eq!(fill(&c, &q, "a", after, Mode::Cluster), 3, "a new day");
    let reported = c.quota_counts(false);
    assert_eq!(reported.len(), 2, "{reported:?}");
    assert!(c.quota_counts(false).is_empty(), "reported once");
    assert_eq!(c.quota_counts(true).len(), 2, "unless all are asked for");
    // A window limiter is never reported.
    c.hit(&window(5, true), "a", after, Mode::Cluster);
    assert!(c.quota_counts(false).is_empty());
}
