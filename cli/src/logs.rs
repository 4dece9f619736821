//! `tollgate logs tail`: call records from every edge as they happen, through the control
//! plane (each node asks the edges streaming from it, and the other members for theirs).

use clap::{Args, Subcommand};
use serde_json::Value;
use tollgate_proto::v1::{TailFilter, TailLogsRequest};

use crate::client::{CliResult, Failure};
use crate::{Format, Global};

#[derive(Subcommand)]
pub enum LogsCmd {
    /// Stream call records from every edge, as they happen (Ctrl-C stops)
    Tail(TailArgs),
}

#[derive(Args)]
pub struct TailArgs {
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    app: Option<String>,
    /// A status class (5xx) or code (404)
    #[arg(long)]
    status: Option<String>,
}

pub async fn logs(g: &Global, cmd: LogsCmd) -> CliResult {
    let LogsCmd::Tail(a) = cmd;
    let status = a.status.unwrap_or_default();
    if !tollgate_proto::tail::valid_status(&status) {
        return Err(Failure {
            message: format!("--status {status:?}: give a class like 5xx or a code like 404"),
            code: 2,
        });
    }
    let filter = TailFilter {
        tenant: a.tenant.unwrap_or_default(),
        service: a.service.unwrap_or_default(),
        app: a.app.unwrap_or_default(),
        status,
    };
    let mut client = crate::client::connect(g).await?;
    let mut stream = client
        .tail_logs(TailLogsRequest {
            filter: Some(filter),
            local: false,
        })
        .await?
        .into_inner();
    while let Some(batch) = stream.message().await? {
        for line in batch.records {
            match g.output {
                Format::Json | Format::Yaml => println!("{line}"),
                Format::Table => println!("{}", human(&line, &batch.edge)),
            }
        }
    }
    Ok(())
}

/// One record on one line: time, status, method, path, service, app, latency, edge.
fn human(line: &str, edge: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    format!(
        "{} {} {} {} {}/{} app={} {}ms {} edge={edge}",
        s("time"),
        v["status"],
        s("method"),
        s("path"),
        s("tenant"),
        s("service"),
        s("app"),
        v["latency_ms"],
        v["error"].as_str().unwrap_or(""),
    )
}
