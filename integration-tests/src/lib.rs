//! The sandbox for multi-process tests: real `tollgate` processes on loopback ports, each in
//! its own data dir under one temp dir, driven through the real CLI and the real gRPC API.
//!
//! Every wait is bounded, and every process is killed when the sandbox drops (logs of a
//! failed test are printed then). The `tollgate` binary must be built first
//! (`cargo build -p tollgate`, which `scripts/check` does); `TOLLGATE_BIN` overrides its path.
//!
//! A sandbox made with [`Sandbox::cluster_tls`] runs mTLS inside the cluster: a CA and
//! certificates made with the real `tollgate cert` CLI ([`Pki`]), `https://` URLs, and the CLI
//! and gRPC clients presenting an operator certificate.
//!
//! Invariant: tests here talk to Tollgate only as users do — processes, ports, files.

pub mod dev;
pub mod edge;
pub mod history;
pub mod idp;
pub mod netns;
pub mod tls;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tollgate_proto::v1::admin_client::AdminClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Path of the `tollgate` binary next to this test executable, checked to be newer than
/// every source file it was built from (cargo's dep-info, `tollgate.d`, lists them): a plain
/// `cargo test` after an edit would otherwise test the old binary. (`TOLLGATE_BIN` overrides
/// the path and skips the check.)
pub fn tollgate_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("TOLLGATE_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = dir.join(format!("tollgate{}", std::env::consts::EXE_SUFFIX));
        let rebuild = "run `cargo build -p tollgate` first (scripts/check does)";
        let built = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| panic!("{} is missing: {rebuild}", bin.display()));
        if let Some(newer) = newer_source(&dir.join("tollgate.d"), built) {
            panic!("{} is older than {newer}: {rebuild}", bin.display());
        }
        bin
    })
    .clone()
}

/// A source file named in the dep-info file `dep_info` (`target: src1 src2 ...`, spaces in
/// names escaped) that changed after `built`, or that no longer exists.
fn newer_source(dep_info: &Path, built: std::time::SystemTime) -> Option<String> {
    let text = std::fs::read_to_string(dep_info).ok()?;
    let line = text.lines().next()?;
    let (_, sources) = line.split_once(": ")?;
    let sources = sources.replace("\\ ", "\0");
    sources
        .split_whitespace()
        .map(|s| s.replace('\0', " "))
        .find(|src| {
            std::fs::metadata(src)
                .and_then(|m| m.modified())
                .map_or(true, |m| m > built)
        })
}

/// A loopback port that was free a moment ago.
///
/// Picked below the kernel's ephemeral range (Linux: 32768-60999), where no outgoing
/// connection can take it between the pick and the process binding it (a load test opens
/// thousands), and spread by the process id so parallel test binaries rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let port = (FIRST + (start + NEXT.fetch_add(7, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 GET over loopback: status and body, or `None` if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tollgate_testkit::raw::send(addr, "GET", path, &[], b"").map(|r| (r.status, r.body))
}

/// The path of `name` on `PATH`; panics with `how` to install it when missing.
pub fn program(name: &str, how: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{name}` is not installed: {how} (.ci/run does)"))
}

/// A script of `tools/`, as a path.
pub fn tool(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools").join(script)
}

/// Starts the Python server `tools/<script>` with `args` (its log in `dir`) and waits for its
/// `listening 127.0.0.1:PORT` line; `missing` says which package to install when Python
/// cannot import one.
pub fn python_server(dir: &Path, script: &str, args: &[String], missing: &str) -> (Proc, u16) {
    let python = program("python3", "install Python 3");
    let log = dir.join(format!("{script}.log"));
    let mut all = vec!["-u".to_string(), tool(script).display().to_string()];
    all.extend_from_slice(args);
    let proc = Proc::spawn_program(&python, script, &all, log.clone(), dir);
    let port = wait_for(&format!("{script} to listen"), Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).ok()?;
        assert!(!text.contains("ModuleNotFoundError"), "{missing}: {text}");
        let line = text.lines().find(|l| l.starts_with("listening "))?;
        line.rsplit(':').next()?.trim().parse().ok()
    });
    (proc, port)
}

/// A process that is killed (SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// The process has not exited.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn spawn(name: &str, args: &[String], log: PathBuf) -> Proc {
        Self::spawn_in(name, args, log, Path::new("."))
    }

    /// Like [`Proc::spawn`], in working directory `cwd`.
    pub fn spawn_in(name: &str, args: &[String], log: PathBuf, cwd: &Path) -> Proc {
        Self::spawn_program(&tollgate_bin(), name, args, log, cwd)
    }

    /// Like [`Proc::spawn_in`], inside the network namespace of `host` when there is one.
    pub fn spawn_on(
        host: Option<&netns::Host>,
        name: &str,
        args: &[String],
        log: PathBuf,
        cwd: &Path,
    ) -> Proc {
        match host {
            Some(h) => {
                let (program, args) = netns::exec_in(h, &tollgate_bin(), args);
                Self::spawn_program(&program, name, &args, log, cwd)
            }
            None => Self::spawn_in(name, args, log, cwd),
        }
    }

    /// Another program (a Prometheus server, a Python receiver), its output into `log`;
    /// killed when dropped, like the rest.
    pub fn spawn_program(program: &Path, name: &str, args: &[String], log: PathBuf, cwd: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening process log");
        let err = out.try_clone().expect("cloning log handle");
        let child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env("TOLLGATE_LOG", "info,openraft=warn,sled=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name: name.into(),
            log,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns whether it exited cleanly.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ({}) ----", self.name, self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A certificate, its key and the CA to trust: what `--tls-cert`, `--tls-key` and
/// `--tls-ca` point at.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `--tls-ca A --tls-cert B --tls-key C`.
    pub fn args(&self) -> Vec<String> {
        [
            ("--tls-ca", &self.ca),
            ("--tls-cert", &self.cert),
            ("--tls-key", &self.key),
        ]
        .iter()
        .flat_map(|(flag, p)| [flag.to_string(), p.display().to_string()])
        .collect()
    }

    /// A tonic client config presenting this certificate and trusting only this CA.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)))
            .identity(tonic::transport::Identity::from_pem(
                read(&self.cert),
                read(&self.key),
            ))
    }
}

/// A certificate authority in a directory, driven through the real `tollgate cert` CLI.
#[derive(Clone, Debug)]
pub struct Pki {
    /// Holds ca.pem, ca.key and every NAME.pem, NAME.key issued.
    pub dir: PathBuf,
}

impl Pki {
    /// `tollgate cert ca --out dir`.
    pub fn create(dir: &Path) -> Pki {
        let out = run_cli(
            Path::new("."),
            "http://unused",
            None,
            &["cert", "ca", "--out", &dir.display().to_string()],
            None,
        );
        assert_eq!(out.code, 0, "tollgate cert ca failed: {out:#?}");
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `tollgate cert issue --ca dir --name NAME --san ... --out dir`; the files for it with
    /// this CA.
    pub fn issue(&self, name: &str, sans: &[&str]) -> TlsFiles {
        self.run_issue(name, sans, false)
    }

    /// Like [`Pki::issue`] with `--force`: replaces the files in place (rotation).
    pub fn reissue(&self, name: &str, sans: &[&str]) -> TlsFiles {
        self.run_issue(name, sans, true)
    }

    fn run_issue(&self, name: &str, sans: &[&str], force: bool) -> TlsFiles {
        let dir = self.dir.display().to_string();
        let mut args = vec!["cert", "issue", "--ca", &dir, "--name", name, "--out", &dir];
        for san in sans {
            args.extend(["--san", san]);
        }
        if force {
            args.push("--force");
        }
        let out = run_cli(Path::new("."), "http://unused", None, &args, None);
        assert_eq!(out.code, 0, "tollgate cert issue failed: {out:#?}");
        self.files(name)
    }

    /// The files of certificate `name` (issued or not).
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.ca(),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }
}

/// One control-plane node of the sandbox.
pub struct CpNode {
    pub id: u64,
    /// The master key file all nodes of the sandbox share (secrets, cluster credential).
    pub master_key: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
    /// The node's certificate, key and CA when the sandbox runs mTLS.
    pub tls: Option<TlsFiles>,
    /// The network namespace it runs in ([`Sandbox::cluster_in`]); `None`: loopback.
    pub host: Option<netns::Host>,
    /// More flags for `tollgate control-plane`, kept across restarts.
    pub extra_args: Vec<String>,
    pub proc: Option<Proc>,
}

impl CpNode {
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.grpc),
            None => format!("http://{}", self.grpc),
        }
    }

    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "node {} already running", self.id);
        let mut args: Vec<String> = [
            "control-plane",
            "--node-id",
            &self.id.to_string(),
            "--data-dir",
            &self.dir.display().to_string(),
            "--grpc",
            &self.grpc.to_string(),
            "--http",
            &self.http.to_string(),
            "--master-key-file",
            &self.master_key.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(tls) = &self.tls {
            args.extend(tls.args());
        }
        args.extend(self.extra_args.iter().cloned());
        let log = self.dir.with_extension("log");
        let name = format!("cp{}", self.id);
        self.proc = Some(Proc::spawn_on(
            self.host.as_ref(),
            &name,
            &args,
            log,
            Path::new("."),
        ));
        let http = self.http;
        wait_for(
            &format!("cp{} /healthz", self.id),
            Duration::from_secs(20),
            || http_get(http, "/healthz").filter(|(s, _)| *s == 200),
        );
    }

    /// `kill -9` the node.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }
}

/// Result of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }

    /// Panics with the output unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }
}

pub type Admin = AdminClient<InterceptedService<Channel, TokenInterceptor>>;

#[derive(Clone)]
pub struct TokenInterceptor(String);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let v = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| tonic::Status::internal("bad token"))?;
        req.metadata_mut().insert("authorization", v);
        Ok(req)
    }
}

/// A set of control-plane processes under one temp dir.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<CpNode>,
    /// The bootstrap admin token.
    pub token: String,
    /// A token of role edge, for edges' `--join-token`.
    pub edge_token: String,
    /// The cluster CA of an mTLS sandbox ([`Sandbox::cluster_tls`]).
    pub pki: Option<Pki>,
    /// The certificate the sandbox's CLI and gRPC clients present under mTLS.
    pub operator: Option<TlsFiles>,
    /// Node `id`'s network namespace is `cp_hosts[id - 1]` ([`Sandbox::cluster_in`]); empty:
    /// every node on loopback.
    pub cp_hosts: Vec<netns::Host>,
}

impl Sandbox {
    /// Starts `n` control-plane nodes, initializes the cluster on the first and adds the
    /// others as voters, all through the CLI.
    pub fn cluster(n: u64) -> Sandbox {
        Self::build(n, false)
    }

    /// Like [`Sandbox::cluster`] with mTLS inside the cluster: a CA in `<dir>/pki` and a
    /// certificate per node (`cpN`, for 127.0.0.1) and for the operator, all made with
    /// `tollgate cert`; nodes at `https://` URLs; the CLI with `--tls-*` flags.
    pub fn cluster_tls(n: u64) -> Sandbox {
        Self::build(n, true)
    }

    /// Like [`Sandbox::cluster_tls`], each node in a network namespace of `net` (hosts
    /// `cp1`..), on the default ports of its own address, so that `net` can partition them.
    /// (mTLS, because a control plane streams config in plaintext to loopback edges only.)
    pub fn cluster_in(net: &netns::Net, n: u64) -> Sandbox {
        Self::build_in(net, n, true)
    }

    /// Like [`Sandbox::cluster_in`] without mTLS (to see plaintext refused off loopback).
    pub fn cluster_in_plaintext(net: &netns::Net, n: u64) -> Sandbox {
        Self::build_in(net, n, false)
    }

    fn build_in(net: &netns::Net, n: u64, tls: bool) -> Sandbox {
        let hosts = (1..=n).map(|id| net.host(&format!("cp{id}"))).collect();
        Self::build_on(n, tls, hosts)
    }

    /// One control-plane process, started but not initialized: no token exists yet.
    pub fn uninitialized() -> Sandbox {
        let mut sb = Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: Vec::new(),
            token: String::new(),
            edge_token: String::new(),
            pki: None,
            operator: None,
            cp_hosts: Vec::new(),
        };
        sb.add_node_process(1);
        sb
    }

    fn build(n: u64, tls: bool) -> Sandbox {
        Self::build_on(n, tls, Vec::new())
    }

    fn build_on(n: u64, tls: bool, cp_hosts: Vec<netns::Host>) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = tls.then(|| Pki::create(&dir.path().join("pki")));
        let operator = pki.as_ref().map(|p| p.issue("operator", &[]));
        let mut sb = Sandbox {
            dir,
            nodes: Vec::new(),
            token: String::new(),
            edge_token: String::new(),
            pki,
            operator,
            cp_hosts,
        };
        for id in 1..=n {
            sb.add_node_process(id);
        }
        let out = sb.cli(0, &["cluster", "init", "-o", "json"]).ok();
        let init: serde_json::Value = serde_json::from_str(&out.stdout).expect("init output is JSON");
        sb.token = init["admin_token"].as_str().expect("admin token").to_string();
        let token_file =
            std::fs::read_to_string(sb.nodes[0].dir.join("admin.token")).expect("admin.token written");
        assert_eq!(token_file.trim(), sb.token);
        for i in 1..sb.nodes.len() {
            let (id, addr) = (sb.nodes[i].id.to_string(), sb.nodes[i].grpc.to_string());
            sb.cli(0, &["cluster", "add-node", "--node-id", &id, "--addr", &addr])
                .ok();
        }
        let out = sb
            .cli(
                0,
                &[
                    "token", "create", "--role", "edge", "--label", "sandbox", "-o", "json",
                ],
            )
            .ok();
        let edge: serde_json::Value = serde_json::from_str(&out.stdout).expect("token output is JSON");
        sb.edge_token = edge["token"].as_str().expect("edge token").to_string();
        sb
    }

    /// Starts another control-plane process (not yet a member); under mTLS with a new
    /// certificate `cp<id>` for 127.0.0.1.
    pub fn add_node_process(&mut self, id: u64) {
        let host = usize::try_from(id - 1)
            .ok()
            .and_then(|i| self.cp_hosts.get(i))
            .cloned();
        let ip = host
            .as_ref()
            .map_or("127.0.0.1".to_string(), |h| h.ip.to_string());
        let tls = self
            .pki
            .as_ref()
            .map(|p| p.issue(&format!("cp{id}"), &[ip.as_str()]));
        let (grpc, http) = match &host {
            Some(h) => (netns::addr(h, 7700), netns::addr(h, 7780)),
            None => (loopback(free_port()), loopback(free_port())),
        };
        let mut node = CpNode {
            id,
            master_key: self.dir.path().join("master.key"),
            grpc,
            http,
            dir: self.dir.path().join(format!("cp{id}")),
            tls,
            host,
            extra_args: Vec::new(),
            proc: None,
        };
        node.start();
        self.nodes.push(node);
    }

    pub fn node(&mut self, id: u64) -> &mut CpNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("no such node")
    }

    /// Runs `tollgate --server <node i> --token <token> args...`.
    pub fn cli(&self, i: usize, args: &[&str]) -> CliOutput {
        self.cli_with_stdin(i, args, None)
    }

    pub fn cli_with_stdin(&self, i: usize, args: &[&str], stdin: Option<&str>) -> CliOutput {
        let token = (!self.token.is_empty()).then_some(self.token.as_str());
        run_cli_tls(
            self.dir.path(),
            &self.nodes[i].url(),
            token,
            self.operator.as_ref(),
            args,
            stdin,
        )
    }

    /// Writes `contents` to a file in the sandbox and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("writing file");
        p.display().to_string()
    }

    /// A gRPC admin client for node `i` carrying the admin token.
    pub async fn admin(&self, i: usize) -> Admin {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.nodes[i].url())
            .expect("url")
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5));
        if let Some(op) = &self.operator {
            endpoint = endpoint.tls_config(op.client_config()).expect("tls config");
        }
        let channel = endpoint.connect_lazy();
        AdminClient::with_interceptor(channel, TokenInterceptor(self.token.clone()))
    }

    /// The current leader's id as seen by any live node (bounded wait).
    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.proc.is_none() {
                    continue;
                }
                let mut c = self.admin(i).await;
                let req = tollgate_proto::v1::ClusterStatusRequest { local: true };
                if let Ok(r) = c.cluster_status(req).await {
                    let r = r.into_inner();
                    let alive = self.nodes.iter().any(|n| n.id == r.leader && n.proc.is_some());
                    if r.leader != 0 && alive {
                        return r.leader;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader elected within 15s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs `tollgate --server <server> args...` in `cwd`, with `TOLLGATE_TOKEN` set to `token`
/// (and no other Tollgate settings from the environment).
pub fn run_cli(
    cwd: &Path,
    server: &str,
    token: Option<&str>,
    args: &[&str],
    stdin: Option<&str>,
) -> CliOutput {
    run_cli_tls(cwd, server, token, None, args, stdin)
}

/// Like [`run_cli`], with `--tls-ca/--tls-cert/--tls-key` from `tls` when given.
pub fn run_cli_tls(
    cwd: &Path,
    server: &str,
    token: Option<&str>,
    tls: Option<&TlsFiles>,
    args: &[&str],
    stdin: Option<&str>,
) -> CliOutput {
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("--server").arg(server);
    if let Some(tls) = tls {
        cmd.args(tls.args());
    }
    cmd.args(args);
    cmd.env_remove("TOLLGATE_TOKEN")
        .env_remove("TOLLGATE_SERVER")
        .env_remove("TOLLGATE_TENANT")
        .env_remove("TOLLGATE_TLS_CA")
        .env_remove("TOLLGATE_TLS_CERT")
        .env_remove("TOLLGATE_TLS_KEY")
        .env("TOLLGATE_LOG", "warn");
    cmd.current_dir(cwd);
    if let Some(t) = token {
        cmd.env("TOLLGATE_TOKEN", t);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning tollgate cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing stdin");
    }
    CliOutput::from(wait_child(child, Duration::from_secs(60)))
}

/// Waits for `child` to exit, killing it after `timeout`; its output.
pub fn wait_child(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("collecting output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("command did not finish within {timeout:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_is_stale_when_a_source_it_was_built_from_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (old, spaced) = (dir.path().join("old.rs"), dir.path().join("with space.rs"));
        std::fs::write(&old, "").unwrap();
        std::fs::write(&spaced, "").unwrap();
        let dep_info = dir.path().join("bin.d");
        let escaped = spaced.display().to_string().replace(' ', "\\ ");
        std::fs::write(&dep_info, format!("/t/bin: {} {escaped}\n", old.display())).unwrap();
        let built = std::time::SystemTime::now() + Duration::from_secs(60);
        assert_eq!(newer_source(&dep_info, built), None);
        let before = std::time::SystemTime::now() - Duration::from_secs(60);
        assert_eq!(newer_source(&dep_info, before), Some(old.display().to_string()));
        std::fs::remove_file(&old).unwrap();
        assert_eq!(
            newer_source(&dep_info, built),
            Some(old.display().to_string()),
            "a source that is gone"
        );
        std::fs::write(&old, "").unwrap();
        std::fs::write(&spaced, "x").unwrap();
        let one_changed = std::fs::metadata(&old).unwrap().modified().unwrap() - Duration::from_millis(1);
        assert!(newer_source(&dep_info, one_changed).is_some());
    }
}
