//! Talking to the admin API: connecting, attaching the token, and turning failures into one
//! line per reason and an exit code.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use tollgate_control_plane::mtls;
use tollgate_proto::v1::admin_client::AdminClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::Global;

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        if let Some(reason) = mtls::tls_failure(&s) {
            return Self {
                message: format!("tls with the control plane failed: {reason}"),
                code: 3,
            };
        }
        if is_transport(&s) {
            // The connection failed under the call. A plaintext client talking to a TLS port
            // ends here too: it reads the TLS alert as a broken h2 frame, or the server hangs up.
            let plaintext = SERVER.get().is_some_and(|s| s.starts_with("http://"));
            let hint = if plaintext {
                ": if it runs mTLS, use an https:// --server with --tls-ca, --tls-cert and --tls-key"
            } else {
                ""
            };
            return Self {
                message: format!(
                    "the connection to the control plane failed ({}){hint}",
                    s.message()
                ),
                code: 6,
            };
        }
        let code = match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => 3,
            Code::NotFound => 4,
            Code::Aborted => 5,
            Code::Unavailable | Code::DeadlineExceeded => 6,
            Code::InvalidArgument => 1,
            _ => 1,
        };
        let message = if s.message().is_empty() {
            format!("{:?}", s.code())
        } else {
            s.message().to_string()
        };
        Self { message, code }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::other(format!("{e:#}"))
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::other(e.to_string())
    }
}

pub type CliResult = Result<(), Failure>;

/// The `--server` this process connected to (one per run), for explaining failed calls.
static SERVER: OnceLock<String> = OnceLock::new();

/// Whether a call failed in the connection rather than with an answer of the server.
fn is_transport(s: &Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cur {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Prints each reason on its own line and exits.
pub fn fail(f: Failure) -> ! {
    for line in f.message.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("error: {line}");
    }
    std::process::exit(f.code)
}

#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

pub type Client = AdminClient<InterceptedService<Channel, Auth>>;

/// The token from `--token`/`TOLLGATE_TOKEN`, else, for a control plane on this machine,
/// `./tollgate-data/admin.token` (what `tollgate dev` writes): a local token is never sent
/// to another host.
fn token(g: &Global) -> Option<String> {
    let explicit = g.token.clone().filter(|t| !t.trim().is_empty());
    if explicit.is_some() || !tollgate_proto::validate::is_local_url(&g.server) {
        return explicit;
    }
    std::fs::read_to_string(Path::new("./tollgate-data/admin.token"))
        .ok()
        .map(|t| t.trim().to_string())
}

/// The TLS connector for an `https://` server (`--tls-ca`, optional `--tls-cert`/`--tls-key`);
/// `None` for `http://`.
fn tls(g: &Global) -> Result<Option<mtls::Connector>, Failure> {
    let usage = |message: String| Failure { message, code: 2 };
    let https = g.server.starts_with("https://");
    let any = g.tls_ca.is_some() || g.tls_cert.is_some() || g.tls_key.is_some();
    if !https {
        return match any {
            true => Err(usage(format!(
                "--tls-ca/--tls-cert/--tls-key are set but --server {:?} is plaintext: use https://",
                g.server
            ))),
            false => Ok(None),
        };
    }
    let Some(ca) = &g.tls_ca else {
        return Err(usage(format!(
            "--server {:?} is https: pass the cluster CA with --tls-ca (and your certificate with --tls-cert/--tls-key)",
            g.server
        )));
    };
    let identity = match (&g.tls_cert, &g.tls_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err(usage("--tls-cert and --tls-key go together".into())),
    };
    let config = mtls::client_config_from_files(ca, identity).map_err(|e| Failure::other(e.to_string()))?;
    Ok(Some(mtls::Connector::fixed(config)))
}

pub async fn connect(g: &Global) -> Result<Client, Failure> {
    let _ = SERVER.set(g.server.clone());
    let tls = tls(g)?;
    // tls() already matched the scheme to the flags: what is left to fail is the URL.
    let endpoint = mtls::endpoint(&g.server, tls.as_ref())
        .map_err(|_| Failure {
            message: format!(
                "--server {:?} is not a URL (e.g. http://127.0.0.1:7700)",
                g.server
            ),
            code: 2,
        })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    let connected = match &tls {
        Some(c) => endpoint.connect_with_connector(c.clone()).await,
        None => endpoint.connect().await,
    };
    let channel = connected.map_err(|e| match mtls::tls_failure(&e) {
        Some(reason) => Failure {
            message: format!("tls with the control plane at {} failed: {reason}", g.server),
            code: 3,
        },
        None => Failure {
            message: format!(
                "cannot reach the control plane at {}: {}",
                g.server,
                root_cause(&e)
            ),
            code: 6,
        },
    })?;
    let auth = match token(g) {
        Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| Failure {
            message: "the admin token has characters a header cannot carry".into(),
            code: 2,
        })?),
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, Auth(auth)))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(server: &str, token: Option<&str>) -> Global {
        Global {
            server: server.into(),
            token: token.map(str::to_string),
            output: crate::Format::Table,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    #[test]
    fn only_loopback_servers_get_the_local_token_file() {
        assert!(tollgate_proto::validate::is_local_url("http://127.0.0.1:7700"));
        assert!(tollgate_proto::validate::is_local_url("http://localhost:7700"));
        assert!(tollgate_proto::validate::is_local_url("http://[::1]:7700"));
        assert!(!tollgate_proto::validate::is_local_url("http://10.0.0.5:7700"));
        assert!(!tollgate_proto::validate::is_local_url("https://cp.example.com"));
        assert!(!tollgate_proto::validate::is_local_url("not a url"));
        // An explicit token is always used; without one, a remote server gets none (the
        // file in ./tollgate-data is only read for loopback servers).
        assert_eq!(
            token(&global("http://10.0.0.5:7700", Some("t"))),
            Some("t".into())
        );
        assert_eq!(token(&global("http://10.0.0.5:7700", None)), None);
    }
}
