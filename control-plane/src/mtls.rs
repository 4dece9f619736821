//! Mutual TLS inside the cluster (`--tls-cert`, `--tls-key`, `--tls-ca`): the `--grpc`
//! listener and every connection a node opens — Raft, forwarding to the leader, the status
//! fan-out, the add-node probe, `--join` — run over TLS with certificates on both sides,
//! trusting the cluster CA only.
//!
//! ```text
//!  cert, key, CA files ──read every 2 s──> changed? ─> Identity (ServerConfig + ClientConfig)
//!                                          │  must chain to the CA, be valid for this node's
//!                                          │  advertised host, for server and client auth;
//!                                          │  otherwise refused and the current one kept
//!                                          └──────────────> ArcSwap ────────────┬──────────┐
//!  --grpc: accept ─> handshake (own task, ≤ 10 s; the client's certificate     │          │
//!          must chain to the CA) ─> tonic                                <──────┘          │
//!  peers:  Channels ─> Connector: TCP ─> handshake (our certificate as the client's; the  │
//!          CA the only root; the server must be valid for the host we dialled) ─> tonic <──┘
//! ```
//!
//! Each handshake takes the configs current at that moment, so a rotated certificate is
//! used from the next connection on while established connections keep theirs. One rustls
//! crypto provider, aws-lc-rs, passed explicitly.
//!
//! Reading and parsing the three files, the provider and the client-certificate check are
//! `tollgate-tls`'s, shared with the edge (re-exported here where they were public); what is
//! the control plane's own is the listener, the connector, the checks against this node's
//! name and the operator wording of TLS failures.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
pub use tollgate_tls::{certificates, private_key, provider, roots, TlsError, TlsFiles};
use tollgate_tls::{read, verify_client, Pems};
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

/// How often the certificate, key and CA files are read again for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Longest TLS handshake the listener waits for.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ALPN_H2: &[u8] = b"h2";

/// A client config trusting `roots` only, presenting `identity` (certificate chain and key)
/// when given, offering ALPN h2.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Reads a client's files (the CLI's `--tls-ca` and optional `--tls-cert`/`--tls-key`).
pub fn client_config_from_files(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let roots = roots(&read(ca)?, ca)?;
    let identity = match identity {
        Some((cert, key)) => Some((certificates(&read(cert)?, cert)?, private_key(&read(key)?, key)?)),
        None => None,
    };
    client_config(roots, identity).map_err(|e| TlsError::Identity(format!("client certificate and key: {e}")))
}

/// Checks that the first certificate in `cert_pem` chains to a CA in `ca_pem` and may be
/// used as a client certificate (what `tollgate cert issue` verifies of what it wrote).
pub fn check_client_certificate(ca_pem: &[u8], cert_pem: &[u8]) -> Result<(), String> {
    let roots = roots(ca_pem, Path::new("CA")).map_err(|e| e.to_string())?;
    let chain = certificates(cert_pem, Path::new("certificate")).map_err(|e| e.to_string())?;
    // The CA holds at least one certificate, so the verifier builds.
    verify_client(&roots, &chain).map_err(|e| explain_certificate(&e))
}

/// Server and client configs built from one version of the files, checked against each
/// other and against the name peers reach this node by.
struct Identity {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Identity {
    fn build(files: &TlsFiles, pems: &Pems, name: &ServerName<'static>) -> Result<Identity, TlsError> {
        let roots = roots(&pems.ca, &files.ca)?;
        let chain = certificates(&pems.cert, &files.cert)?;
        let key = private_key(&pems.key, &files.key)?;
        // A certificate peers would refuse is refused here, with the reason, instead.
        let now = UnixTime::now();
        let (leaf, intermediates) = chain.split_first().expect("certificates() returns at least one");
        let as_server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::file(&files.ca, e))?;
        as_server
            .verify_server_cert(leaf, intermediates, name, &[], now)
            .map_err(|e| {
                TlsError::Identity(format!(
                    "{}: peers would refuse it as this node's certificate at {}: {}",
                    files.cert.display(),
                    name.to_str(),
                    explain_certificate(&e)
                ))
            })?;
        // The server config's verifier; built before the check so that a failure to build it
        // is reported as before, naming the CA file.
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::file(&files.ca, e))?;
        verify_client(&roots, &chain).map_err(|e| {
            TlsError::Identity(format!(
                "{}: peers would refuse it as a client certificate: {}",
                files.cert.display(),
                explain_certificate(&e)
            ))
        })?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Identity(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                TlsError::Identity(format!(
                    "{} does not hold the key of {}: {e}",
                    files.key.display(),
                    files.cert.display()
                ))
            })?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        let client =
            client_config(roots, Some((chain, key))).map_err(|e| TlsError::Identity(e.to_string()))?;
        Ok(Identity {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// A node's mTLS identity, re-read from its files while it runs.
pub struct ClusterTls {
    files: TlsFiles,
    /// The host peers dial this node at (its advertised address).
    name: ServerName<'static>,
    server: ArcSwap<ServerConfig>,
    client: Arc<ArcSwap<ClientConfig>>,
    loaded: std::sync::Mutex<Vec<u8>>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("files", &self.files)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Loads the files for a node peers reach at `advertised` (host:port); its certificate
    /// must be valid for that host and chain to the CA.
    pub fn load(files: TlsFiles, advertised: &str) -> Result<ClusterTls, TlsError> {
        let name = server_name(host_of(advertised)).map_err(TlsError::Identity)?;
        let pems = files.read()?;
        let identity = Identity::build(&files, &pems, &name)?;
        Ok(ClusterTls {
            name,
            server: ArcSwap::new(identity.server),
            client: Arc::new(ArcSwap::new(identity.client)),
            loaded: std::sync::Mutex::new(pems.fingerprint()),
            files,
        })
    }

    /// The server config for the next accepted connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.load_full()
    }

    /// A connector presenting this node's current certificate.
    pub fn connector(&self) -> Connector {
        Connector {
            config: self.client.clone(),
        }
    }

    /// Reads the files again; when they changed and check out, new connections use them.
    /// `Ok(true)`: reloaded; `Ok(false)`: unchanged (or the same refused version again).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let pems = self.files.read()?;
        let fingerprint = pems.fingerprint();
        {
            let mut loaded = self.loaded.lock().expect("tls fingerprint lock poisoned");
            if *loaded == fingerprint {
                return Ok(false);
            }
            // Remembered before checking, so a refused version is reported once.
            *loaded = fingerprint;
        }
        let identity = Identity::build(&self.files, &pems, &self.name)?;
        self.server.store(identity.server);
        self.client.store(identity.client);
        Ok(true)
    }

    /// Re-reads the files every [`RELOAD_INTERVAL`] until `stop` resolves.
    pub async fn watch(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return,
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload()).await {
                Ok(Ok(true)) => {
                    tracing::info!(cert = %self.files.cert.display(), "cluster tls certificate reloaded; new connections use it")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cluster tls files changed but were refused; keeping the current certificate")
                }
                Err(e) => tracing::warn!(error = %e, "reloading the cluster tls files panicked"),
            }
        }
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// Opens TLS connections for tonic channels: TCP to the URI's host and port, then a
/// handshake with the current client config, checking the server's certificate against
/// the host. Tonic only sees a stream, so channels using it are built on `http://` URIs.
///
/// A TLS 1.3 client finishes its handshake before the server has checked the client's
/// certificate, so a refusal would only surface later as a closed connection. The connector
/// therefore waits for the server's first bytes (an h2 server speaks first: its SETTINGS)
/// and hands them on: the server's refusal, with its reason, is a connect error.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ArcSwap<ClientConfig>>,
}

impl Connector {
    /// A connector with a fixed config (the CLI).
    pub fn fixed(config: ClientConfig) -> Connector {
        Connector {
            config: Arc::new(ArcSwap::from_pointee(config)),
        }
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<Established>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.load_full();
        Box::pin(async move {
            let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| invalid(format!("{uri}: no port")))?;
            let name = server_name(&host).map_err(invalid)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
            let mut first = vec![0u8; 16 * 1024];
            let n = tls.read(&mut first).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the server closed the connection after the tls handshake",
                ));
            }
            first.truncate(n);
            Ok(TokioIo::new(Established { tls, first, read: 0 }))
        })
    }
}

/// A client connection after the server accepted it: the bytes read while waiting for the
/// server's verdict are read again first.
pub struct Established {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    first: Vec<u8>,
    read: usize,
}

impl Established {
    /// The TLS session (peer certificates, ALPN).
    pub fn session(&self) -> &rustls::ClientConnection {
        self.tls.get_ref().1
    }
}

impl AsyncRead for Established {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.first.len() {
            let n = (this.first.len() - this.read).min(buf.remaining());
            buf.put_slice(&this.first[this.read..this.read + n]);
            this.read += n;
            if this.read == this.first.len() {
                this.first = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Established {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// An endpoint for `url` (`http://` or `https://`). With a connector the endpoint's URI is
/// rewritten to `http://` (the connector, not tonic, speaks TLS) and `https://` is required.
pub fn endpoint(url: &str, tls: Option<&Connector>) -> Result<Endpoint, String> {
    let uri = match (tls, url.strip_prefix("https://")) {
        (Some(_), Some(rest)) => format!("http://{rest}"),
        (Some(_), None) => return Err(format!("{url:?}: the cluster runs mTLS, so use an https:// URL")),
        (None, Some(_)) => {
            return Err(format!(
                "{url:?}: https:// needs the cluster's TLS files (--tls-ca, --tls-cert, --tls-key)"
            ))
        }
        (None, None) => url.to_string(),
    };
    Endpoint::from_shared(uri).map_err(|_| format!("{url:?} is not a URL"))
}

/// A channel from `endpoint`, through `tls` when given; connects on first use.
pub fn connect_lazy(endpoint: Endpoint, tls: Option<&Connector>) -> Channel {
    match tls {
        Some(c) => endpoint.connect_with_connector_lazy(c.clone()),
        None => endpoint.connect_lazy(),
    }
}

/// The `--grpc` listener's connections after a successful handshake. Handshakes run in
/// their own tasks (a slow client delays nobody); refused ones are logged. Accepting stops
/// when the stream is dropped (the server shutting down).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ClusterTls>,
) -> ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "accepting a grpc connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%peer, "connection closed before the tls handshake")
                    }
                    Ok(Err(e)) => {
                        let reason =
                            rustls_error(&e).map_or_else(|| e.to_string(), |r| explain(r, Side::Server));
                        tracing::warn!(%peer, %reason, "tls handshake refused")
                    }
                    Err(_) => tracing::warn!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The TLS reason a connection this process opened failed, in words for operators; `None`
/// when TLS was not the cause.
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = rustls_error(err) {
            return Some(explain(r, Side::Client));
        }
        cur = err.source();
    }
    None
}

/// Which end of the handshake we are, for naming the other one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// A rustls error, also one wrapped in an `io::Error` (whose `source()` skips it).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    e.downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn explain(e: &rustls::Error, side: Side) -> String {
    let (us, them) = match side {
        Side::Client => ("our client certificate", "the server"),
        Side::Server => ("this node's certificate", "the client"),
    };
    match e {
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate (pass --tls-cert and --tls-key issued by the cluster CA)".into()
        }
        rustls::Error::AlertReceived(
            a @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied),
        ) => format!("{them} refused {us} ({a:?}): is it issued by the CA {them} trusts?"),
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => {
            format!("{them} refused {us}: it has expired")
        }
        rustls::Error::InvalidCertificate(c) => {
            format!("{them}'s certificate: {}", explain_certificate_error(c))
        }
        rustls::Error::NoCertificatesPresented => "the client presented no certificate".into(),
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            format!("{them} does not speak TLS (a plaintext http:// client or server?)")
        }
        other => format!("tls: {other}"),
    }
}

fn explain_certificate(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => explain_certificate_error(c),
        other => other.to_string(),
    }
}

fn explain_certificate_error(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => "not issued by the cluster CA (--tls-ca)".into(),
        CertificateError::BadSignature => "not signed by the cluster CA (--tls-ca)".into(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("not valid for the host dialled ({})", CertificateErrorDisplay(e))
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not valid yet".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not issued for this use (it needs extended key usages serverAuth and clientAuth: `tollgate cert issue` sets both)".into()
        }
        other => CertificateErrorDisplay(other).to_string(),
    }
}

struct CertificateErrorDisplay<'a>(&'a CertificateError);

impl std::fmt::Display for CertificateErrorDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        rustls::Error::InvalidCertificate(self.0.clone()).fmt(f)
    }
}

#[cfg(test)]
mod tests;
