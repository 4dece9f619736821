//! Traffic rollups, shared by the edge (which counts them per minute) and the control plane
//! (which keeps them, merged over edges and downsampled): the key, the value and its latency
//! sketch.
//!
//! The sketch is DDSketch's idea in its simplest form: a value `x` (microseconds) goes to
//! bin `ceil(log_γ x)` with `γ = (1 + α) / (1 - α)`, and a bin stands for
//! `2γ^i / (γ + 1)`, so every quantile is within relative error `α` ([`RELATIVE_ERROR`],
//! 1%) of a true value at that rank. Sketches merge by adding bins, exactly, which is what
//! lets the control plane merge edges and minutes. Values are clamped to 1 µs .. 10⁴ s,
//! so a sketch has at most about 1,600 bins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::v1;

/// The relative error of every quantile a [`Sketch`] answers.
pub const RELATIVE_ERROR: f64 = 0.01;
const MAX_MICROS: f64 = 1e10;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR)
}

/// A mergeable latency sketch over microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    bins: BTreeMap<i32, u64>,
}

impl Sketch {
    pub fn add(&mut self, micros: f64) {
        let x = micros.clamp(1.0, MAX_MICROS);
        let bin = (x.ln() / gamma().ln()).ceil() as i32;
        *self.bins.entry(bin).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (bin, n) in &other.bins {
            *self.bins.entry(*bin).or_insert(0) += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.bins.values().sum()
    }

    /// The `q` quantile (0..=1) in microseconds; 0 for an empty sketch.
    pub fn quantile(&self, q: f64) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * (count - 1) as f64).floor() as u64;
        let mut seen = 0;
        for (bin, n) in &self.bins {
            seen += n;
            if seen > rank {
                let g = gamma();
                return 2.0 * g.powi(*bin) / (g + 1.0);
            }
        }
        unreachable!("rank is below the count")
    }

    pub fn to_proto(&self) -> v1::LatencySketch {
        v1::LatencySketch {
            bins: self.bins.keys().copied().collect(),
            counts: self.bins.values().copied().collect(),
        }
    }

    /// `None` for a malformed sketch (lengths differ, bins out of range).
    pub fn from_proto(p: &v1::LatencySketch) -> Option<Sketch> {
        if p.bins.len() != p.counts.len() {
            return None;
        }
        let max = (MAX_MICROS.ln() / gamma().ln()).ceil() as i32;
        let mut bins = BTreeMap::new();
        for (bin, n) in p.bins.iter().zip(&p.counts) {
            if !(0..=max).contains(bin) {
                return None;
            }
            let slot: &mut u64 = bins.entry(*bin).or_insert(0);
            *slot = slot.checked_add(*n)?;
        }
        Some(Sketch { bins })
    }
}

/// What a rollup row is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub tenant: String,
    pub service: String,
    pub app: String,
    pub model: String,
    /// "1xx" .. "5xx".
    pub status_class: String,
}

/// What a rollup row counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Value {
    pub requests: u64,
    pub latency: Sketch,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
}

impl Value {
    pub fn merge(&mut self, o: &Value) {
        self.requests = self.requests.saturating_add(o.requests);
        self.latency.merge(&o.latency);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cost += o.cost;
    }
}

/// The status classes, in order: rollup rows, metric labels and `tollgate stats` columns.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Longest tenant, service, app, model or node id a rollup may carry.
pub const MAX_FIELD: usize = 256;

/// One reported row: (minute, key, value, node, epoch); `None` when malformed.
pub fn from_proto(r: &v1::Rollup) -> Option<(u64, Key, Value, String, u64)> {
    let fields = [&r.tenant, &r.service, &r.app, &r.model, &r.node_id];
    if fields.iter().any(|f| f.len() > MAX_FIELD) || r.node_id.is_empty() {
        return None;
    }
    if !STATUS_CLASSES.contains(&r.status_class.as_str()) {
        return None;
    }
    if !(r.cost.is_finite() && r.cost >= 0.0) {
        return None;
    }
    let latency = Sketch::from_proto(r.latency.as_ref()?)?;
    let key = Key {
        tenant: r.tenant.clone(),
        service: r.service.clone(),
        app: r.app.clone(),
        model: r.model.clone(),
        status_class: r.status_class.clone(),
    };
    let value = Value {
        requests: r.requests,
        latency,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cost: r.cost,
    };
    Some((r.minute, key, value, r.node_id.clone(), r.epoch))
}

/// A row as the edge reports it.
pub fn to_proto(minute: u64, key: &Key, value: &Value, node_id: &str, epoch: u64) -> v1::Rollup {
    v1::Rollup {
        minute,
        tenant: key.tenant.clone(),
        service: key.service.clone(),
        app: key.app.clone(),
        model: key.model.clone(),
        status_class: key.status_class.clone(),
        requests: value.requests,
        latency: Some(value.latency.to_proto()),
        bytes_in: value.bytes_in,
        bytes_out: value.bytes_out,
        input_tokens: value.input_tokens,
        output_tokens: value.output_tokens,
        cost: value.cost,
        node_id: node_id.into(),
        epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_relative_error_and_merge_exactly() {
        let mut a = Sketch::default();
        let mut b = Sketch::default();
        let mut all: Vec<f64> = Vec::new();
        // A skewed spread: 1 µs to about 10 s.
        for i in 0..20_000u64 {
            let x = 1.0 + ((i * 7919) % 20_000) as f64 * ((i % 97) as f64 + 1.0) * 5.0;
            all.push(x);
            if i % 3 == 0 {
                a.add(x)
            } else {
                b.add(x)
            }
        }
        a.merge(&b);
        assert_eq!(a.count(), 20_000);
        all.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let truth = all[(q * (all.len() - 1) as f64).floor() as usize];
            let got = a.quantile(q);
            assert!(
                (got - truth).abs() <= truth * RELATIVE_ERROR + 1e-9,
                "q{q}: {got} vs {truth}"
            );
        }
        let back = Sketch::from_proto(&a.to_proto()).unwrap();
        assert_eq!(back, a);
        assert_eq!(Sketch::default().quantile(0.5), 0.0);
    }

    #[test]
    fn malformed_sketches_and_rows_are_refused() {
        let bad = v1::LatencySketch {
            bins: vec![1, 2],
            counts: vec![1],
        };
        assert!(Sketch::from_proto(&bad).is_none());
        let far = v1::LatencySketch {
            bins: vec![100_000],
            counts: vec![1],
        };
        assert!(Sketch::from_proto(&far).is_none());
        let overflow = v1::LatencySketch {
            bins: vec![3, 3],
            counts: vec![u64::MAX, 1],
        };
        assert!(Sketch::from_proto(&overflow).is_none());
        let key = Key {
            tenant: "t".into(),
            service: "s".into(),
            app: String::new(),
            model: String::new(),
            status_class: "2xx".into(),
        };
        let good = to_proto(5, &key, &Value::default(), "edge-1", 9);
        assert!(from_proto(&good).is_some());
        for broken in [
            v1::Rollup {
                status_class: "6xx".into(),
                ..good.clone()
            },
            v1::Rollup {
                cost: f64::NAN,
                ..good.clone()
            },
            v1::Rollup {
                node_id: String::new(),
                ..good.clone()
            },
            v1::Rollup {
                tenant: "x".repeat(MAX_FIELD + 1),
                ..good.clone()
            },
            v1::Rollup {
                latency: None,
                ..good.clone()
            },
        ] {
            assert!(from_proto(&broken).is_none(), "{broken:?}");
        }
    }
}
