//! Usage charts of a service or an app, read from the replicated rollups through the admin
//! API's `stats` (as the user's token, so a developer sees only their tenant's traffic) and
//! drawn on the server as inline SVG: requests by status class, latency percentiles, and
//! tokens and cost for AI traffic.
//!
//! `GET /portal/usage?tenant=T&service=S` (or `&app=A`) `&range=1h|24h|30d`

use std::fmt::Write;

use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::{StatsRequest, StatsRow};

use crate::portal::ctx::{Ctx, Form, Resp};
use crate::portal::html::{E, U};

/// The ranges offered: name, length, bucket (as `stats` groups by time).
const RANGES: [(&str, u64, &str, u64); 3] = [
    ("1h", 3_600_000, "minute", 60_000),
    ("24h", 86_400_000, "hour", 3_600_000),
    ("30d", 30 * 86_400_000, "day", 86_400_000),
];

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 150.0;

/// One series of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    values: Vec<f64>,
}

/// `GET /portal/usage`
pub async fn usage(ctx: &Ctx, query: &Form) -> Resp {
    let (tenant, service, app) = (query.get("tenant"), query.get("service"), query.get("app"));
    let (range, span, group_by, bucket) = RANGES
        .iter()
        .copied()
        .find(|r| r.0 == query.get("range"))
        .unwrap_or(RANGES[0]);
    let now = crate::node::now_ms();
    // Whole buckets, the current one last.
    let to_ms = (now / bucket + 1) * bucket;
    let from_ms = to_ms - span;
    let ask = |group_by: &str| StatsRequest {
        from_ms,
        to_ms,
        group_by: group_by.into(),
        tenant: tenant.into(),
        service: service.into(),
        app: app.into(),
    };
    let (series, total) = match (
        ctx.admin.stats(ctx.req(ask(group_by))).await,
        ctx.admin.stats(ctx.req(ask(""))).await,
    ) {
        (Ok(s), Ok(t)) => (s.into_inner(), t.into_inner()),
        (Err(e), _) | (_, Err(e)) => return ctx.failed("The usage cannot be read", &e),
    };
    let n = (span / bucket) as usize;
    let mut rows: Vec<StatsRow> = vec![StatsRow::default(); n];
    for r in series.rows {
        let Ok(start) = r.group.parse::<u64>() else {
            continue;
        };
        if let Some(i) = start.checked_sub(from_ms).map(|d| (d / bucket) as usize) {
            if i < n {
                rows[i] = r;
            }
        }
    }
    let what = match (service.is_empty(), app.is_empty()) {
        (false, _) => format!("service {tenant}/{service}"),
        (true, false) => format!("app {tenant}/{app}"),
        _ if !tenant.is_empty() => format!("tenant {tenant}"),
        _ => "all traffic".into(),
    };
    let mut b = String::new();
    let base = format!(
        "/portal/usage?tenant={}&service={}&app={}",
        U(tenant),
        U(service),
        U(app)
    );
    b.push_str("<p>");
    for (name, ..) in RANGES {
        if name == range {
            let _ = write!(b, "<strong>last {name}</strong> ");
        } else {
            let _ = write!(b, "<a href=\"{base}&range={name}\">last {name}</a> ");
        }
    }
    b.push_str("</p>");
    let t = total.total.unwrap_or_default();
    let class = |r: &StatsRow, i: usize| r.by_class.get(i).copied().unwrap_or(0) as f64;
    let errors = class(&t, 3) + class(&t, 4);
    let _ = write!(
        b,
        "<table id=\"usage-total\"><tr><th>Requests</th><th>Errors (4xx, 5xx)</th><th>p50</th><th>p95</th><th>p99</th><th>Tokens in / out</th><th>Cost</th></tr>\
         <tr><td>{}</td><td>{} ({:.2}%)</td><td>{:.1} ms</td><td>{:.1} ms</td><td>{:.1} ms</td><td>{} / {}</td><td>{:.4}</td></tr></table>\
         <p class=\"note\">Percentiles within {:.0}% (the rollups' sketch).</p>",
        t.requests,
        errors,
        if t.requests == 0 { 0.0 } else { 100.0 * errors / t.requests as f64 },
        t.p50_ms,
        t.p95_ms,
        t.p99_ms,
        t.input_tokens,
        t.output_tokens,
        t.cost,
        total.relative_error * 100.0
    );
    let ok: Vec<f64> = rows
        .iter()
        .map(|r| class(r, 0) + class(r, 1) + class(r, 2))
        .collect();
    b.push_str("<h2>Requests</h2>");
    b.push_str(&bars(
        "chart-requests",
        &[
            Series {
                name: "1xx-3xx",
                color: "#3f8f5a",
                values: ok,
            },
            Series {
                name: "4xx",
                color: "#d9a03f",
                values: rows.iter().map(|r| class(r, 3)).collect(),
            },
            Series {
                name: "5xx",
                color: "#c8483c",
                values: rows.iter().map(|r| class(r, 4)).collect(),
            },
        ],
    ));
    b.push_str("<h2>Latency (ms)</h2>");
    b.push_str(&lines(
        "chart-latency",
        &[
            Series {
                name: "p50",
                color: "#3b6fb6",
                values: rows.iter().map(|r| r.p50_ms).collect(),
            },
            Series {
                name: "p95",
                color: "#d9a03f",
                values: rows.iter().map(|r| r.p95_ms).collect(),
            },
            Series {
                name: "p99",
                color: "#c8483c",
                values: rows.iter().map(|r| r.p99_ms).collect(),
            },
        ],
    ));
    if t.input_tokens + t.output_tokens > 0 {
        b.push_str("<h2>Tokens</h2>");
        b.push_str(&bars(
            "chart-tokens",
            &[
                Series {
                    name: "input",
                    color: "#6b5fb5",
                    values: rows.iter().map(|r| r.input_tokens as f64).collect(),
                },
                Series {
                    name: "output",
                    color: "#a58fe0",
                    values: rows.iter().map(|r| r.output_tokens as f64).collect(),
                },
            ],
        ));
        b.push_str("<h2>Cost</h2>");
        b.push_str(&bars(
            "chart-cost",
            &[Series {
                name: "cost",
                color: "#3f8f5a",
                values: rows.iter().map(|r| r.cost).collect(),
            }],
        ));
    }
    let _ = write!(
        b,
        "<p class=\"note\">{} buckets of {}, the newest on the right; from the replicated per-minute rollups the edges report.</p>",
        n,
        match group_by {
            "minute" => "a minute",
            "hour" => "an hour",
            _ => "a day",
        }
    );
    ctx.page(&format!("Usage of {what}"), &b)
}

/// The legend and the frame of a chart with a y maximum of `max`.
fn frame(id: &str, series: &[Series<'_>], max: f64) -> String {
    let mut s = format!(
        "<svg id=\"{}\" class=\"chart\" viewBox=\"0 0 {WIDTH} {}\" width=\"{WIDTH}\" height=\"{}\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#fff\" stroke=\"#e3e6ea\"/>\
         <text x=\"4\" y=\"12\" font-size=\"11\" fill=\"#667\">{}</text>",
        E(id),
        HEIGHT + 18.0,
        HEIGHT + 18.0,
        E(&short(max))
    );
    let mut x = 4.0;
    for se in series {
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#334\">{}</text>",
            HEIGHT + 6.0,
            se.color,
            x + 14.0,
            HEIGHT + 15.0,
            E(se.name)
        );
        x += 24.0 + 7.0 * se.name.len() as f64;
    }
    s
}

/// Stacked bars, one per bucket.
fn bars(id: &str, series: &[Series<'_>]) -> String {
    let n = series.first().map_or(0, |s| s.values.len()).max(1);
    let max = (0..n)
        .map(|i| series.iter().map(|s| s.values[i]).sum::<f64>())
        .fold(0.0, f64::max);
    let mut svg = frame(id, series, max);
    let w = WIDTH / n as f64;
    for i in 0..n {
        let mut y = HEIGHT;
        for s in series {
            let h = if max > 0.0 {
                s.values[i] / max * (HEIGHT - 16.0)
            } else {
                0.0
            };
            if h > 0.0 {
                y -= h;
                let _ = write!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                    i as f64 * w + 1.0,
                    (w - 2.0).max(1.0),
                    s.color,
                    E(s.name),
                    short(s.values[i])
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Lines, one point per bucket (buckets with no traffic at zero).
fn lines(id: &str, series: &[Series<'_>]) -> String {
    let n = series.first().map_or(0, |s| s.values.len()).max(1);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    let mut svg = frame(id, series, max);
    let w = WIDTH / n as f64;
    for s in series {
        let points: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let y = if max > 0.0 {
                    HEIGHT - v / max * (HEIGHT - 16.0)
                } else {
                    HEIGHT
                };
                format!("{:.1},{y:.1}", (i as f64 + 0.5) * w)
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            s.color,
            points.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A number for an axis: `1234` -> `1.2k`.
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v if v == v.trunc() => format!("{v}"),
        v => format!("{v:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_to_the_tallest_bucket_and_escape_names() {
        let svg = bars(
            "c",
            &[
                Series {
                    name: "ok",
                    color: "#000",
                    values: vec![1.0, 3.0],
                },
                Series {
                    name: "<x>",
                    color: "#111",
                    values: vec![1.0, 0.0],
                },
            ],
        );
        // The y axis tops at 3 (the second bucket), three bars are drawn (the zero is not).
        assert!(svg.contains(">3</text>"), "{svg}");
        assert_eq!(svg.matches("<title>").count(), 3, "{svg}");
        assert!(svg.contains("&lt;x&gt;") && !svg.contains("<x>"));
        assert_eq!(short(1234.0), "1.2k");
        assert_eq!(short(0.25), "0.250");
    }
}
