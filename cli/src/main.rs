//! `tollgate`: the one binary operators run. Server subcommands (`dev`, `control-plane`,
//! `edge`) and the operator verbs that talk to the admin API of any control-plane node.
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage, 3 not authenticated, 4 not found,
//! 5 conflict (stale resource_version), 6 control plane unavailable.

mod cert;
/// mimalloc instead of the system allocator: the proxy path allocates per request and
/// glibc's malloc showed in profiles (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod logs;
mod output;
mod servers;
mod stats;
mod verbs;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "Tollgate: API gateway, AI gateway and API management", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Control-plane gRPC URL (any node; writes are forwarded to the leader)
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_SERVER",
        default_value = "http://127.0.0.1:7700"
    )]
    server: String,
    /// Admin token (default: read from ./tollgate-data/admin.token when present)
    #[arg(long, global = true, env = "TOLLGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Cluster CA (PEM) trusted for an https:// --server
    #[arg(long, global = true, env = "TOLLGATE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to an https:// --server (with --tls-key)
    #[arg(long, global = true, env = "TOLLGATE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, global = true, env = "TOLLGATE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node control plane and an edge node in one process
    Dev(servers::DevArgs),
    /// Run one control-plane node
    ControlPlane(servers::ControlPlaneArgs),
    /// Run one edge node
    Edge(servers::EdgeArgs),
    /// Manage the control-plane cluster
    #[command(subcommand)]
    Cluster(verbs::ClusterCmd),
    /// Create or update what a declarative file names (all or nothing)
    Apply(verbs::ApplyArgs),
    /// Show what `apply` would change
    Diff(verbs::DiffArgs),
    /// Print the whole declarative config
    Export(verbs::ExportArgs),
    /// List resources of a kind, or show one
    Get(verbs::GetArgs),
    /// Delete one resource
    Delete(verbs::DeleteArgs),
    /// Create resources from other formats: `import openapi FILE --tenant T --upstream U`
    #[command(subcommand)]
    Import(verbs::ImportCmd),
    /// Manage API keys
    #[command(subcommand)]
    Key(verbs::KeyCmd),
    /// Decide on subscription requests
    #[command(subcommand)]
    Subscription(verbs::SubscriptionCmd),
    /// Manage secrets (encrypted at rest, never shown)
    #[command(subcommand)]
    Secret(verbs::SecretCmd),
    /// Manage tokens for operators (roles cluster-admin, tenant-admin, tenant-developer,
    /// viewer) and edge nodes (edge)
    #[command(subcommand)]
    Token(verbs::TokenCmd),
    /// Who changed what, when: the admin writes, newest first
    Audit(verbs::AuditArgs),
    /// Traffic over a time range (requests, errors, latency percentiles, tokens, cost),
    /// grouped by service, app, status or model; `stats limits`: an edge's rate limits
    Stats(stats::StatsArgs),
    /// Call records from every edge as they happen: `logs tail [--service S] [--status 5xx]`
    #[command(subcommand)]
    Logs(logs::LogsCmd),
    /// Create a CA and certificates for mTLS inside the cluster (offline)
    #[command(subcommand)]
    Cert(cert::CertCmd),
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Common defaults for listen addresses (DESIGN.md §2).
pub mod defaults {
    pub const GRPC: &str = "127.0.0.1:7700";
    pub const HTTP: &str = "127.0.0.1:7780";
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN: &str = "127.0.0.1:9901";
    pub const PEER: &str = "127.0.0.1:7900";
}

pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not host:port (e.g. 127.0.0.1:8080)"))
}

pub fn default_data_dir() -> PathBuf {
    PathBuf::from("./tollgate-data")
}

/// The clap command with the operator flags (`--server`, `--token`, `-o`) hidden from the
/// server subcommands' help: they are global so that `tollgate get services -o json` works,
/// but `dev`, `control-plane` and `edge` never read them. `control-plane` and `edge` take the
/// cluster certificates under the `--tls-*` names; `dev` takes none.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    // `control-plane` has a `--token` of its own (for `--join`), which shadows the global one.
    let hidden: [(&str, &[&str]); 3] = [
        (
            "dev",
            &["server", "token", "output", "tls_ca", "tls_cert", "tls_key"],
        ),
        ("control-plane", &["server", "output"]),
        ("edge", &["server", "token", "output"]),
    ];
    for (server, hidden) in hidden {
        // `mut_args` keeps the args in place (the built command indexes them by position).
        cmd = cmd.mut_subcommand(server, |sub| {
            sub.mut_args(|a| {
                let hide = hidden.contains(&a.get_id().as_str());
                a.hide(hide)
            })
        });
    }
    cmd
}

fn main() {
    use clap::FromArgMatches;
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    let server_mode = matches!(
        cli.command,
        Command::Dev(_) | Command::ControlPlane(_) | Command::Edge(_)
    );
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if server_mode { "info" } else { "warn" }));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    // On one core (a container limit, or `taskset`), the single-threaded runtime: no work
    // stealing or cross-thread wakeups to pay for. Otherwise one worker per core.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let runtime = if one_core {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => client::fail(client::Failure::other(format!("starting runtime: {e}"))),
    };
    let result = runtime.block_on(async move {
        let g = cli.global;
        match cli.command {
            Command::Dev(a) => servers::dev(a).await,
            Command::ControlPlane(mut a) => {
                a.tls.inherit(&g);
                servers::control_plane(a).await
            }
            Command::Edge(mut a) => {
                a.tls.inherit(&g);
                servers::edge(a).await
            }
            Command::Cluster(c) => verbs::cluster(&g, c).await,
            Command::Apply(a) => verbs::apply(&g, a).await,
            Command::Import(c) => verbs::import(&g, c).await,
            Command::Diff(a) => verbs::diff(&g, a).await,
            Command::Export(a) => verbs::export(&g, a).await,
            Command::Get(a) => verbs::get(&g, a).await,
            Command::Delete(a) => verbs::delete(&g, a).await,
            Command::Key(c) => verbs::key(&g, c).await,
            Command::Subscription(c) => verbs::subscription(&g, c).await,
            Command::Secret(c) => verbs::secret(&g, c).await,
            Command::Token(c) => verbs::token(&g, c).await,
            Command::Audit(a) => verbs::audit(&g, a).await,
            Command::Stats(a) => stats::stats(&g, a).await,
            Command::Logs(c) => logs::logs(&g, c).await,
            Command::Cert(c) => cert::cert(c),
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut command(), "tollgate", &mut std::io::stdout());
                Ok(())
            }
        }
    });
    if let Err(f) = result {
        client::fail(f);
    }
}

#[cfg(test)]
mod tests {
    use clap::FromArgMatches;

    use super::*;

    fn help(sub: &str) -> String {
        let mut cmd = command();
        cmd.find_subcommand_mut(sub)
            .unwrap()
            .render_long_help()
            .to_string()
    }

    #[test]
    fn server_subcommands_show_only_their_own_flags() {
        for server in ["dev", "control-plane", "edge"] {
            let h = help(server);
            for flag in ["--server", "--output", "tollgate-data/admin.token when present"] {
                assert!(!h.contains(flag), "{server} --help lists {flag}:\n{h}");
            }
        }
        assert!(!help("edge").contains("--token"));
        assert!(help("control-plane").contains("--token <TOKEN>"));
        assert!(help("edge").contains("--join-token") && help("edge").contains("--tls-ca"));
        assert!(!help("dev").contains("--tls-ca"));
        let get = help("get");
        assert!(get.contains("--server") && get.contains("--output"), "{get}");
    }

    #[test]
    fn operator_flags_parse_before_and_after_the_verb() {
        for args in [
            &[
                "tollgate",
                "--server",
                "http://cp:7700",
                "get",
                "services",
                "-o",
                "json",
            ][..],
            &[
                "tollgate",
                "get",
                "services",
                "--server",
                "http://cp:7700",
                "-o",
                "json",
            ][..],
        ] {
            let cli = Cli::from_arg_matches(&command().get_matches_from(args)).unwrap();
            assert_eq!(cli.global.server, "http://cp:7700");
            assert!(cli.global.output == Format::Json);
        }
    }
}
