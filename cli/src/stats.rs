//! `tollgate stats`: what edges and the control plane count. `tollgate stats` itself reads
//! the traffic rollups the control plane keeps (requests, status classes, error rate,
//! latency percentiles, bytes, tokens and cost over a time range, grouped); `stats limits`
//! asks one edge's admin port (`GET /limits`) for its rate limits: usage per key, this
//! edge's view and the cluster's, its peers and whether it is in step.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{CliResult, Failure};
use crate::output::{print, Table};
use crate::{defaults, Global};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct StatsArgs {
    #[command(subcommand)]
    cmd: Option<StatsCmd>,
    #[command(flatten)]
    traffic: TrafficArgs,
}

/// Traffic over a time range, from the control plane's rollups.
#[derive(Args)]
pub struct TrafficArgs {
    /// How far back from now: 15m, 1h, 7d (ignored with --from)
    #[arg(long, default_value = "1h")]
    since: tollgate_proto::duration::HumanDuration,
    /// Start of the range, RFC 3339 (2026-12-03T10:00:00Z)
    #[arg(long)]
    from: Option<String>,
    /// End of the range, RFC 3339 (default: now)
    #[arg(long)]
    to: Option<String>,
    /// Group rows by (minute, hour, day: a time series, each row named by its start)
    #[arg(long, default_value = "service", value_parser = ["service", "app", "status", "model", "tenant", "total", "minute", "hour", "day"])]
    by: String,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    app: Option<String>,
}

#[derive(Subcommand)]
pub enum StatsCmd {
    /// An edge's rate limits: usage per key (this edge and the cluster), peers, fallback
    Limits(LimitsArgs),
}

#[derive(Args)]
pub struct LimitsArgs {
    /// The edge's admin address (its --admin), host:port
    #[arg(long, default_value = defaults::ADMIN)]
    edge: String,
}

const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from an edge.
const MAX_ANSWER: u64 = 16 << 20;

pub async fn stats(g: &Global, a: StatsArgs) -> CliResult {
    match a.cmd {
        Some(StatsCmd::Limits(l)) => limits(g, l),
        None => traffic(g, a.traffic).await,
    }
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn parse_time(flag: &str, s: &str) -> Result<u64, Failure> {
    humantime::parse_rfc3339_weak(s)
        .map(unix_ms)
        .map_err(|e| Failure {
            message: format!("{flag} {s:?}: {e}; write e.g. 2026-12-03T10:00:00Z"),
            code: 2,
        })
}

async fn traffic(g: &Global, a: TrafficArgs) -> CliResult {
    let now = unix_ms(std::time::SystemTime::now());
    let to_ms = match &a.to {
        Some(t) => parse_time("--to", t)?,
        None => now,
    };
    let from_ms = match &a.from {
        Some(f) => parse_time("--from", f)?,
        None => to_ms.saturating_sub(a.since.0.as_millis() as u64),
    };
    let mut client = crate::client::connect(g).await?;
    let r = client
        .stats(tollgate_proto::v1::StatsRequest {
            from_ms,
            to_ms,
            group_by: if a.by == "total" {
                String::new()
            } else {
                a.by.clone()
            },
            tenant: a.tenant.unwrap_or_default(),
            service: a.service.unwrap_or_default(),
            app: a.app.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let by_time = matches!(a.by.as_str(), "minute" | "hour" | "day");
    // A time bucket's name is its start in Unix ms: shown as RFC 3339.
    let group_name = |group: &str| match group.parse::<u64>() {
        Ok(ms) if by_time => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
                .to_string()
        }
        _ => group.to_string(),
    };
    let row_json = |r: &tollgate_proto::v1::StatsRow| {
        let errors = r.by_class.get(4).copied().unwrap_or(0);
        serde_json::json!({
            "group": group_name(&r.group),
            "requests": r.requests,
            "by_status": tollgate_proto::rollup::STATUS_CLASSES
                .iter()
                .zip(&r.by_class)
                .map(|(c, n)| (c.to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "error_rate": if r.requests == 0 { 0.0 } else { errors as f64 / r.requests as f64 },
            "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms,
            "bytes_in": r.bytes_in, "bytes_out": r.bytes_out,
            "input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "cost": r.cost,
        })
    };
    let v = serde_json::json!({
        "from_ms": from_ms,
        "to_ms": to_ms,
        "group_by": a.by,
        "relative_error": r.relative_error,
        "rows": r.rows.iter().map(row_json).collect::<Vec<_>>(),
        "total": r.total.as_ref().map(row_json),
    });
    print(g.output, &v, || {
        let mut t = Table::new(&[
            &a.by.to_uppercase(),
            "REQUESTS",
            "2XX",
            "3XX",
            "4XX",
            "5XX",
            "ERRORS",
            "P50",
            "P95",
            "P99",
            "TOKENS",
            "COST",
        ]);
        let ms = |x: f64| format!("{x:.1}ms");
        for row in r.rows.iter().chain(r.total.iter()) {
            let class = |i: usize| row.by_class.get(i).copied().unwrap_or(0).to_string();
            let errors = row.by_class.get(4).copied().unwrap_or(0);
            let rate = if row.requests == 0 {
                0.0
            } else {
                100.0 * errors as f64 / row.requests as f64
            };
            t.row(vec![
                if row.group.is_empty() {
                    "-".into()
                } else {
                    group_name(&row.group)
                },
                row.requests.to_string(),
                class(1),
                class(2),
                class(3),
                class(4),
                format!("{rate:.2}%"),
                ms(row.p50_ms),
                ms(row.p95_ms),
                ms(row.p99_ms),
                (row.input_tokens + row.output_tokens).to_string(),
                format!("{:.4}", row.cost),
            ]);
        }
        format!(
            "{}percentiles within {:.0}% (a merged sketch)\n",
            t.render(),
            r.relative_error * 100.0
        )
    });
    Ok(())
}

fn unavailable(edge: &str, why: impl std::fmt::Display) -> Failure {
    Failure {
        message: format!("cannot ask the edge at {edge}: {why}"),
        code: 6,
    }
}

/// `GET path` on an edge's admin port; its JSON body.
fn get_json(edge: &str, path: &str) -> Result<Value, Failure> {
    let addr = edge
        .to_socket_addrs()
        .map_err(|e| unavailable(edge, e))?
        .next()
        .ok_or_else(|| unavailable(edge, "no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| unavailable(edge, e))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| unavailable(edge, e))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {edge}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| unavailable(edge, e))?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(|e| unavailable(edge, e))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| unavailable(edge, "not an HTTP answer"))?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(unavailable(edge, head.lines().next().unwrap_or_default()));
    }
    serde_json::from_str(body).map_err(|e| unavailable(edge, format!("not JSON: {e}")))
}

fn limits(g: &Global, a: LimitsArgs) -> CliResult {
    let v = get_json(&a.edge, "/limits")?;
    print(g.output, &v, || {
        let yes = |b: &Value| if b.as_bool() == Some(true) { "yes" } else { "no" };
        let mut out = format!(
            "edges: {}, in step: {}, batches every {} ms\n",
            v["edges"],
            yes(&v["in_step"]),
            v["batch_interval_ms"]
        );
        let mut peers = Table::new(&["PEER", "ADDRESS", "HEARD", "TAKING"]);
        for p in v["peers"].as_array().into_iter().flatten() {
            peers.row(vec![
                p["node_id"].as_str().unwrap_or_default().into(),
                p["addr"].as_str().unwrap_or_default().into(),
                yes(&p["heard"]).into(),
                yes(&p["taking"]).into(),
            ]);
        }
        out.push_str(&peers.render());
        let mut t = Table::new(&[
            "POLICY",
            "SCOPE",
            "BOUND",
            "FALLBACK",
            "KEY",
            "THIS EDGE",
            "CLUSTER",
        ]);
        for l in v["limits"].as_array().into_iter().flatten() {
            let keys: Vec<&Value> = l["keys"].as_array().into_iter().flatten().collect();
            let base = |key: &str, local: String, cluster: String| {
                vec![
                    l["policy"].as_str().unwrap_or_default().into(),
                    l["scope"].as_str().unwrap_or_default().into(),
                    l["error_bound"].to_string(),
                    yes(&l["fallback"]).into(),
                    key.into(),
                    local,
                    cluster,
                ]
            };
            if keys.is_empty() {
                t.row(base("-", "0".into(), "0".into()));
            }
            for k in keys {
                t.row(base(
                    k["key"].as_str().unwrap_or_default(),
                    k["local"].to_string(),
                    k["cluster"].to_string(),
                ));
            }
        }
        out.push_str(&t.render());
        out
    });
    Ok(())
}
