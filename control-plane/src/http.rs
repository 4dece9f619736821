//! The control plane's HTTP listener (`--http`): `/healthz`, `/readyz` (a leader known and
//! every entry held applied), a Prometheus `/metrics`, and
//! the developer portal under `/portal` (`portal/`).

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::node::Node;
use crate::portal::{self, Portal};

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn metrics(node: &Node) -> String {
    let m = node.raft.metrics().borrow().clone();
    let leader = u8::from(m.current_leader == Some(node.id));
    let applied = m.last_applied.map_or(0, |l| l.index);
    let last_log = m.last_log_index.unwrap_or(0);
    let snapshot = m.snapshot.map_or(0, |l| l.index);
    let purged = m.purged.map_or(0, |l| l.index);
    let edges = node.edges.connected();
    let resources = node.sm.read(|s| s.resources.len());
    let mut out = format!(
        "# HELP tollgate_cp_is_leader 1 when this node is the Raft leader.\n\
         # TYPE tollgate_cp_is_leader gauge\ntollgate_cp_is_leader {leader}\n\
         # HELP tollgate_cp_raft_term Current Raft term.\n\
         # TYPE tollgate_cp_raft_term gauge\ntollgate_cp_raft_term {}\n\
         # HELP tollgate_cp_applied_index Last Raft log index applied (the config version).\n\
         # TYPE tollgate_cp_applied_index gauge\ntollgate_cp_applied_index {applied}\n\
         # HELP tollgate_cp_last_log_index Last Raft log index stored.\n\
         # TYPE tollgate_cp_last_log_index gauge\ntollgate_cp_last_log_index {last_log}\n\
         # HELP tollgate_cp_snapshot_index Last Raft log index covered by a snapshot.\n\
         # TYPE tollgate_cp_snapshot_index gauge\ntollgate_cp_snapshot_index {snapshot}\n\
         # HELP tollgate_cp_purged_index Last Raft log index purged after a snapshot.\n\
         # TYPE tollgate_cp_purged_index gauge\ntollgate_cp_purged_index {purged}\n\
         # HELP tollgate_cp_edges_connected Edge nodes streaming config from this node.\n\
         # TYPE tollgate_cp_edges_connected gauge\ntollgate_cp_edges_connected {edges}\n\
         # HELP tollgate_cp_resources Resources stored.\n\
         # TYPE tollgate_cp_resources gauge\ntollgate_cp_resources {resources}\n\
         # HELP tollgate_cp_log_entries Raft log entries kept (last index less the purged one).\n\
         # TYPE tollgate_cp_log_entries gauge\ntollgate_cp_log_entries {}\n\
         # HELP tollgate_cp_leader_id The node this node believes leads (0: none known).\n\
         # TYPE tollgate_cp_leader_id gauge\ntollgate_cp_leader_id {}\n\
         # HELP tollgate_cp_audit_refusals_dropped_total Refused admin calls not audited (past the budget).\n\
         # TYPE tollgate_cp_audit_refusals_dropped_total counter\ntollgate_cp_audit_refusals_dropped_total {}\n",
        m.current_term,
        last_log.saturating_sub(purged),
        m.current_leader.unwrap_or(0),
        node.refusals.dropped(),
    );
    // Config lag of the edges streaming from this node (bounded by the edges that exist).
    out.push_str(
        "# HELP tollgate_cp_edge_config_lag Config versions an edge connected here is behind.\n\
         # TYPE tollgate_cp_edge_config_lag gauge\n",
    );
    for e in node.edges.list(node.id, 0).iter().filter(|e| e.connected) {
        let _ = writeln!(
            out,
            "tollgate_cp_edge_config_lag{{edge=\"{}\"}} {}",
            tollgate_proto::prom::label(&e.node_id),
            applied.saturating_sub(e.applied_version)
        );
    }
    out
}

async fn handle(
    node: Arc<Node>,
    portal: Arc<Portal>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let json = "application/json";
    if portal::is_portal(req.uri().path()) {
        return Ok(portal.handle(req).await);
    }
    Ok(match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => respond(
            StatusCode::OK,
            json,
            serde_json::json!({"status": "ok", "node_id": node.id, "role": node.role()}).to_string(),
        ),
        ("GET", "/readyz") => match node.not_ready() {
            None => respond(
                StatusCode::OK,
                json,
                serde_json::json!({"status": "ready", "node_id": node.id, "role": node.role()}).to_string(),
            ),
            Some(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                json,
                serde_json::json!({"status": "not_ready", "node_id": node.id, "reason": reason}).to_string(),
            ),
        },
        ("GET", "/metrics") => respond(StatusCode::OK, "text/plain; version=0.0.4", metrics(&node)),
        _ => respond(
            StatusCode::NOT_FOUND,
            json,
            r#"{"error":{"code":"not_found","message":"no such page"}}"#.into(),
        ),
    })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    gateway: Option<portal::Gateway>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let portal = Arc::new(Portal::new(node.clone(), gateway));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let node = node.clone();
        let portal = portal.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(node.clone(), portal.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
