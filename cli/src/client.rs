//! Talking to the admin API: connecting, attaching the token, and turning failures into one
//! line per reason and an exit code.

use std::path::Path;
use std::time::Duration;

use tollgate_proto::v1::admin_client::AdminClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
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
    if explicit.is_some() || !is_loopback(&g.server) {
        return explicit;
    }
    std::fs::read_to_string(Path::new("./tollgate-data/admin.token"))
        .ok()
        .map(|t| t.trim().to_string())
}

fn is_loopback(server: &str) -> bool {
    let Ok(uri) = server.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

pub async fn connect(g: &Global) -> Result<Client, Failure> {
    let endpoint = Endpoint::from_shared(g.server.clone())
        .map_err(|_| Failure {
            message: format!(
                "--server {:?} is not a URL (e.g. http://127.0.0.1:7700)",
                g.server
            ),
            code: 2,
        })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|e| Failure {
        message: format!(
            "cannot reach the control plane at {}: {}",
            g.server,
            root_cause(&e)
        ),
        code: 6,
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
        }
    }

    #[test]
    fn only_loopback_servers_get_the_local_token_file() {
        assert!(is_loopback("http://127.0.0.1:7700"));
        assert!(is_loopback("http://localhost:7700"));
        assert!(is_loopback("http://[::1]:7700"));
        assert!(!is_loopback("http://10.0.0.5:7700"));
        assert!(!is_loopback("https://cp.example.com"));
        assert!(!is_loopback("not a url"));
        // An explicit token is always used; without one, a remote server gets none (the
        // file in ./tollgate-data is only read for loopback servers).
        assert_eq!(
            token(&global("http://10.0.0.5:7700", Some("t"))),
            Some("t".into())
        );
        assert_eq!(token(&global("http://10.0.0.5:7700", None)), None);
    }
}
