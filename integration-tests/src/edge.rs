//! Edge-node processes and a plain HTTP upstream for sandbox tests.
//!
//! - [`EdgeNode`]: one real `tollgate edge` process on loopback ports, its last-known-good
//!   config in a data dir under the sandbox's temp dir; killed (and its log printed on a
//!   failed test) when dropped, restartable on the same ports and data dir.
//! - [`Upstream`], [`send`] and [`Reply`] come from the test toolkit (`tollgate-testkit`):
//!   an upstream echoing every request back as JSON, a raw HTTP/1.1 client, its answer.
//! - TLS helpers (test CA, TLS client, HTTPS upstream) are in [`crate::tls`].
//!
//! Every wait is bounded; nothing here needs an async runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use tollgate_testkit::mock::Upstream;
pub use tollgate_testkit::raw::{send, Reply};

use crate::{free_port, http_get, loopback, wait_for, Proc, Sandbox, TlsFiles};

/// How long an edge process may take to answer `/healthz` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One `tollgate edge` process.
pub struct EdgeNode {
    pub node_id: String,
    /// Proxy listener (`--listen`).
    pub proxy: SocketAddr,
    /// Admin listener (`--admin`): `/healthz`, `/readyz`, `/config/version`.
    pub admin: SocketAddr,
    /// Counter-sharing listener (`--peer`).
    pub peer: SocketAddr,
    /// TLS proxy listener (`--tls-listen`), when started with one ([`EdgeNode::start_tls`]).
    pub tls: Option<SocketAddr>,
    /// `--data-dir`, where the last-known-good config lives.
    pub dir: PathBuf,
    pub log: PathBuf,
    pub control_planes: Vec<String>,
    /// `--join-token` (a token of role edge).
    pub join_token: String,
    /// More flags for `tollgate edge` (e.g. `--body-read-timeout 1s`), kept across restarts.
    pub extra_args: Vec<String>,
    /// `--tls-ca/--tls-cert/--tls-key` towards an mTLS control plane: in a
    /// [`Sandbox::cluster_tls`] sandbox a certificate `edge-<node_id>` of its CA.
    pub cluster_tls: Option<TlsFiles>,
    /// The network namespace it runs in (set its addresses on the host too); `None`:
    /// loopback.
    pub host: Option<crate::netns::Host>,
    proc: Option<Proc>,
}

impl EdgeNode {
    /// Starts an edge named `node_id` pointed at every control-plane node of the sandbox, and
    /// waits (bounded) until it answers `/healthz`.
    pub fn start(sb: &Sandbox, node_id: &str) -> EdgeNode {
        let mut edge = Self::for_sandbox(sb, node_id, None);
        edge.spawn();
        edge
    }

    /// Like [`EdgeNode::start`], also serving TLS on a free loopback port ([`EdgeNode::tls`]).
    pub fn start_tls(sb: &Sandbox, node_id: &str) -> EdgeNode {
        let mut edge = Self::for_sandbox(sb, node_id, Some(loopback(free_port())));
        edge.spawn();
        edge
    }

    /// Like [`EdgeNode::start`], with more `tollgate edge` flags.
    pub fn start_with_args(sb: &Sandbox, node_id: &str, extra_args: &[&str]) -> EdgeNode {
        let mut edge = Self::for_sandbox(sb, node_id, None);
        edge.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        edge.spawn();
        edge
    }

    /// Like [`EdgeNode::start`] with the given `--tls-*` files towards the control plane
    /// (say, a certificate of another CA).
    pub fn start_with_cluster_tls(sb: &Sandbox, node_id: &str, files: TlsFiles) -> EdgeNode {
        let mut edge = Self::for_sandbox(sb, node_id, None);
        edge.cluster_tls = Some(files);
        edge.spawn();
        edge
    }

    /// An edge of the sandbox, not yet started (set [`EdgeNode::extra_args`], then
    /// [`EdgeNode::spawn`]): every control-plane URL, the edge token, and under mTLS a fresh
    /// certificate `edge-<node_id>` of the sandbox's CA.
    pub fn for_sandbox(sb: &Sandbox, node_id: &str, tls_listen: Option<SocketAddr>) -> EdgeNode {
        let urls = sb.nodes.iter().map(|n| n.url()).collect();
        let mut edge = Self::new(sb.dir.path(), node_id, urls, &sb.edge_token, tls_listen);
        edge.cluster_tls = sb
            .pki
            .as_ref()
            .map(|p| p.reissue(&format!("edge-{node_id}"), &[]));
        edge
    }

    /// Like [`EdgeNode::start`] with explicit control-plane URLs; files go under `root`.
    pub fn start_with(root: &Path, node_id: &str, control_planes: Vec<String>, join_token: &str) -> EdgeNode {
        Self::start_full(root, node_id, control_planes, join_token, None)
    }

    fn start_full(
        root: &Path,
        node_id: &str,
        control_planes: Vec<String>,
        join_token: &str,
        tls: Option<SocketAddr>,
    ) -> EdgeNode {
        let mut edge = Self::new(root, node_id, control_planes, join_token, tls);
        edge.spawn();
        edge
    }

    /// The edge's ports and paths, not yet started.
    fn new(
        root: &Path,
        node_id: &str,
        control_planes: Vec<String>,
        join_token: &str,
        tls: Option<SocketAddr>,
    ) -> EdgeNode {
        EdgeNode {
            node_id: node_id.to_string(),
            proxy: loopback(free_port()),
            admin: loopback(free_port()),
            peer: loopback(free_port()),
            tls,
            dir: root.join(format!("edge-{node_id}")),
            log: root.join(format!("edge-{node_id}.log")),
            control_planes,
            join_token: join_token.to_string(),
            extra_args: Vec::new(),
            cluster_tls: None,
            host: None,
            proc: None,
        }
    }

    /// Spawns the process (same ports, same data dir) and waits for `/healthz`.
    pub fn spawn(&mut self) {
        assert!(self.proc.is_none(), "edge {} already running", self.node_id);
        let mut args: Vec<String> = [
            "edge",
            "--control-plane",
            &self.control_planes.join(","),
            "--listen",
            &self.proxy.to_string(),
            "--admin",
            &self.admin.to_string(),
            "--peer",
            &self.peer.to_string(),
            "--data-dir",
            &self.dir.display().to_string(),
            "--node-id",
            &self.node_id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Empty: the token comes another way (say `--join-token-file` in `extra_args`).
        if !self.join_token.is_empty() {
            args.extend(["--join-token".to_string(), self.join_token.clone()]);
        }
        if let Some(tls) = self.tls {
            args.extend(["--tls-listen".to_string(), tls.to_string()]);
        }
        args.extend(self.extra_args.iter().cloned());
        if let Some(files) = &self.cluster_tls {
            args.extend(files.args());
        }
        let name = format!("edge {}", self.node_id);
        self.proc = Some(Proc::spawn_on(
            self.host.as_ref(),
            &name,
            &args,
            self.log.clone(),
            Path::new("."),
        ));
        let admin = self.admin;
        wait_for(&format!("{name} /healthz"), START_TIMEOUT, || {
            http_get(admin, "/healthz").filter(|(s, _)| *s == 200)
        });
    }

    /// `kill -9` the process (no-op when it is not running).
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM (a graceful drain); whether it exited cleanly within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.proc.take().is_some_and(|p| p.terminate(timeout))
    }

    /// `kill -9`, then start again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The edge process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The edge process was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_alive)
    }

    /// The version `/config/version` reports (0 before any config), `None` if no answer.
    pub fn config_version(&self) -> Option<u64> {
        let (status, body) = http_get(self.admin, "/config/version")?;
        if status != 200 {
            return None;
        }
        serde_json::from_str::<Value>(&body).ok()?["version"].as_u64()
    }

    /// The status of `/readyz`, `None` if no answer.
    pub fn readyz(&self) -> Option<u16> {
        http_get(self.admin, "/readyz").map(|(s, _)| s)
    }

    /// Waits (bounded) until the edge serves config version `at_least` or newer; returns how
    /// long that took.
    pub fn wait_for_version(&self, at_least: u64, timeout: Duration) -> Duration {
        let started = Instant::now();
        wait_for(
            &format!("edge {} to reach config version {at_least}", self.node_id),
            timeout,
            || self.config_version().filter(|v| *v >= at_least),
        );
        started.elapsed()
    }

    /// Sends a request to the proxy listener; panics if nothing answers.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(self.proxy, method, path, headers, b"")
            .unwrap_or_else(|| panic!("edge {} did not answer {method} {path}", self.node_id))
    }

    /// `GET path` with the API key in the `apikey` header (or none when `key` is empty).
    pub fn get_with_key(&self, path: &str, key: &str) -> Reply {
        if key.is_empty() {
            self.request("GET", path, &[])
        } else {
            self.request("GET", path, &[("apikey", key)])
        }
    }
}
