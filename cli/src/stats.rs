//! `tollgate stats`: what edges and the control plane count. `stats limits` asks one edge's
//! admin port (`GET /limits`) for its rate limits: usage per key, this edge's view and the
//! cluster's, its peers and whether it is in step.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{CliResult, Failure};
use crate::output::{print, Table};
use crate::{defaults, Global};

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

pub fn stats(g: &Global, cmd: StatsCmd) -> CliResult {
    match cmd {
        StatsCmd::Limits(a) => limits(g, a),
    }
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
