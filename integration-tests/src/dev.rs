//! A `tollgate dev` process as a user runs it: in a directory of its own, on free loopback
//! ports, ready once its edge answers `/readyz`; the CLI run in the same directory finds the
//! admin token by itself.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::{free_port, http_get, loopback, run_cli, wait_for, CliOutput, Proc};

/// The ports of one `tollgate dev`.
pub struct Dev {
    pub grpc: SocketAddr,
    /// The control plane's HTTP port: `/healthz`, `/metrics` and the portal.
    pub http: SocketAddr,
    /// The edge's proxy listener.
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub peer: SocketAddr,
}

impl Dev {
    pub fn new() -> Dev {
        let p = || loopback(free_port());
        Dev {
            grpc: p(),
            http: p(),
            listen: p(),
            admin: p(),
            peer: p(),
        }
    }

    /// Starts `tollgate dev` in `dir` (its output in `dir/log`) and waits, bounded, until its
    /// edge is ready.
    pub fn start(&self, dir: &Path, log: &str) -> Proc {
        let args: Vec<String> = [
            "dev",
            "--grpc",
            &self.grpc.to_string(),
            "--http",
            &self.http.to_string(),
            "--listen",
            &self.listen.to_string(),
            "--admin",
            &self.admin.to_string(),
            "--peer",
            &self.peer.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc::spawn_in("tollgate dev", &args, dir.join(log), dir);
        let admin = self.admin;
        wait_for("the dev edge to be ready", Duration::from_secs(30), || {
            http_get(admin, "/readyz").filter(|(s, _)| *s == 200)
        });
        proc
    }

    /// The CLI in `dir`, without `--token` (it reads `./tollgate-data/admin.token`).
    pub fn cli(&self, dir: &Path, args: &[&str]) -> CliOutput {
        run_cli(dir, &format!("http://{}", self.grpc), None, args, None)
    }
}

impl Default for Dev {
    fn default() -> Self {
        Self::new()
    }
}
