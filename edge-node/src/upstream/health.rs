//! Active health checks: for an upstream with `health: {path, interval, timeout,
//! unhealthy_after, healthy_after}`, one background task GETs `path` on every target each
//! `interval` (at the target's host, whatever its base path). An answer of 2xx or 3xx within
//! `timeout` is a success; anything else (another status, a timeout, a connect error) a
//! failure. `unhealthy_after` failures in a row take the target out of rotation,
//! `healthy_after` successes in a row bring it back. Targets start in rotation.
//!
//! ```text
//!  compile upstream ─> Checkers::ensure(spec) ──same spec as a live checker?── yes ─> share it
//!                                                   └─ no ─> spawn a task (Arc<Checker>)
//!  snapshot dropped ─> last Arc<Checker> dropped ─> task aborted
//! ```
//! A checker lives exactly as long as some snapshot uses it: a config swap that keeps the
//! upstream unchanged keeps the task running; any change to the upstream starts a new one
//! (the verdicts live in the targets' [`Endpoint`]s, so they carry over).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header::USER_AGENT, Request, Uri};
use http_body_util::{BodyExt, Limited};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tollgate_proto::model::{HealthCheck, Upstream};

use crate::body;
use crate::upstream::client::HttpClient;
use crate::upstream::client::{self, Destination};
use crate::upstream::endpoint::Endpoint;
use crate::upstream::target::Target;

/// Most bytes of a check's answer read (so the connection can be reused); the rest is
/// dropped with the connection.
const MAX_CHECK_BODY: usize = 64 * 1024;

/// A running checker; dropping the last handle stops it.
#[derive(Debug)]
pub struct Checker {
    task: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Live checkers by the upstream spec they check. Used only while compiling a config.
#[derive(Debug, Default)]
pub struct Checkers {
    by_spec: HashMap<String, Weak<Checker>>,
    prune_at: usize,
}

/// One target to check.
struct Probe {
    url: String,
    /// `health.path`, in origin form.
    path: Uri,
    dest: Destination,
    endpoint: Arc<Endpoint>,
}

impl Checkers {
    /// The checker for upstream `u` (whose compiled targets and endpoints are given), shared
    /// with live snapshots when its spec is unchanged; `None` when `u` has no health check,
    /// or outside a Tokio runtime (compiling in a plain test).
    pub fn ensure(
        &mut self,
        u: &Upstream,
        targets: &[Target],
        endpoints: &[Arc<Endpoint>],
        client: &HttpClient,
    ) -> Result<Option<Arc<Checker>>, String> {
        let Some(health) = &u.health else {
            return Ok(None);
        };
        let mut probes = Vec::with_capacity(targets.len());
        for (t, endpoint) in targets.iter().zip(endpoints) {
            let path = Uri::builder()
                .path_and_query(health.path.as_str())
                .build()
                .map_err(|e| format!("health.path: invalid path {:?}: {e}", health.path))?;
            probes.push(Probe {
                url: t.url.clone(),
                path,
                dest: t.dest.clone(),
                endpoint: endpoint.clone(),
            });
        }
        let mut spec = u.clone();
        spec.resource_version = None;
        let key = serde_json::to_string(&spec).map_err(|e| format!("health: {e}"))?;
        if let Some(live) = self.by_spec.get(&key).and_then(Weak::upgrade) {
            return Ok(Some(live));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(tenant = %u.tenant, upstream = %u.name, "no runtime; health checks not started");
            return Ok(None);
        };
        if self.by_spec.len() >= self.prune_at {
            self.by_spec.retain(|_, c| c.strong_count() > 0);
            self.prune_at = (self.by_spec.len() * 2).max(16);
        }
        let task = runtime.spawn(run(
            u.tenant.clone(),
            u.name.clone(),
            health.clone(),
            probes,
            client.clone(),
        ));
        let checker = Arc::new(Checker { task });
        self.by_spec.insert(key, Arc::downgrade(&checker));
        Ok(Some(checker))
    }
}

async fn run(tenant: String, upstream: String, spec: HealthCheck, probes: Vec<Probe>, client: HttpClient) {
    tracing::debug!(%tenant, %upstream, targets = probes.len(), interval = ?spec.interval.0, "health checks started");
    let mut tick = tokio::time::interval(spec.interval.0);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = probes.iter().map(|p| async {
            let result = check(&client, p, spec.timeout.0).await;
            let changed = p
                .endpoint
                .record_check(result.is_ok(), spec.unhealthy_after, spec.healthy_after);
            match (changed, result) {
                (Some(false), Err(reason)) => {
                    tracing::warn!(%tenant, %upstream, target = %p.url, %reason, "target failed its health checks; out of rotation")
                }
                (Some(true), _) => {
                    tracing::info!(%tenant, %upstream, target = %p.url, "target passed its health checks; back in rotation")
                }
                _ => {}
            }
        });
        futures::future::join_all(checks).await;
    }
}

/// One check: `Ok` for a 2xx or 3xx answer within `timeout`, else why not.
async fn check(client: &HttpClient, probe: &Probe, timeout: Duration) -> Result<(), String> {
    let req = Request::get(probe.path.clone())
        .header(USER_AGENT, "tollgate-health-check")
        .body(body::full(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let attempt = async {
        let (resp, conn) = client
            .send(&probe.dest, probe.endpoint.idle(), req)
            .await
            .map_err(|e| crate::error::chain(&e))?;
        let status = resp.status();
        // Read the answer so the connection can be used again; its content is ignored.
        if Limited::new(resp.into_body(), MAX_CHECK_BODY)
            .collect()
            .await
            .is_ok()
        {
            if let Some(conn) = conn {
                client::release(probe.endpoint.idle(), conn);
            }
        }
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("status {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst};

    use http::Response;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tollgate_proto::model::Document;

    use super::*;
    use crate::upstream::{Clients, UpstreamPool};

    /// A target answering `/healthz` with `status` and counting the checks.
    async fn target(status: Arc<AtomicU16>, hits: Arc<AtomicUsize>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (status, hits) = (status.clone(), hits.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, SeqCst);
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = http::StatusCode::from_u16(status.load(SeqCst)).unwrap();
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn upstream(addr: SocketAddr, interval: &str) -> Upstream {
        let doc = format!(
            "upstreams: [{{name: be, tenant: acme, targets: [{{url: 'http://{addr}'}}],
              health: {{path: /healthz, interval: {interval}, timeout: 500ms, unhealthy_after: 2, healthy_after: 1}}}}]"
        );
        Document::parse(&doc).unwrap().upstreams.remove(0)
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    #[tokio::test]
    async fn checks_mark_targets_down_and_up_and_stop_with_the_last_snapshot() {
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let addr = target(status.clone(), hits.clone()).await;
        let mut clients = Clients::default();
        let spec = upstream(addr, "50ms");
        let pool = UpstreamPool::compile(&spec, &mut clients).unwrap();
        let endpoint = pool.balancer.endpoint(0).clone();
        eventually("the first check ran", || hits.load(SeqCst) >= 1).await;
        assert!(endpoint.is_up());

        // The same spec again (a config swap that kept the upstream) shares the checker.
        let same = UpstreamPool::compile(&spec, &mut clients).unwrap();
        assert!(Arc::ptr_eq(same.balancer.endpoint(0), &endpoint));
        let before = hits.load(SeqCst);
        tokio::time::sleep(Duration::from_millis(260)).await;
        let checks = hits.load(SeqCst) - before;
        assert!(
            (2..=8).contains(&checks),
            "{checks} checks in 260ms at 50ms: one checker expected"
        );

        status.store(500, SeqCst);
        eventually("the target is down", || !endpoint.is_up()).await;
        status.store(204, SeqCst);
        eventually("the target is up", || endpoint.is_up()).await;

        // A changed upstream gets a new checker; the old one stops with the last pool using it.
        let changed = UpstreamPool::compile(&upstream(addr, "60ms"), &mut clients).unwrap();
        assert!(Arc::ptr_eq(changed.balancer.endpoint(0), &endpoint));
        drop((pool, same, changed));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after_drop = hits.load(SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(hits.load(SeqCst), after_drop, "a checker outlived its snapshots");
    }

    #[tokio::test]
    async fn a_silent_or_refusing_target_fails_its_checks() {
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let client = Clients::default().get(Duration::from_millis(200));
        let probe = |addr: SocketAddr| {
            let target = Target::parse(&format!("http://{addr}")).unwrap();
            Probe {
                url: target.url.clone(),
                path: Uri::from_static("/healthz"),
                dest: target.dest,
                endpoint: Arc::new(Endpoint::new(crate::clock::now())),
            }
        };
        let started = std::time::Instant::now();
        let err = check(&client, &probe(silent_addr), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(silent);
        let err = check(&client, &probe(silent_addr), Duration::from_millis(500)).await;
        assert!(err.is_err());
    }
}
