//! TLS termination on `--tls-listen`: the certificate is picked per handshake by SNI from the
//! current config snapshot, so a new or rotated certificate is served from the next
//! handshake on, without a restart and without a lock.
//!
//! ```text
//!  config push ─> Snapshot::compile ─> CertStore (chain + parsed key per host, off the
//!                                       request path; a bad key NACKs the config)
//!  ClientHello(SNI) ─> SniResolver ─> CertSource (the snapshot's CertStore::lookup)
//!                        exact host ─> longest `*.` wildcard ─> none: handshake refused
//!  ALPN: h2, http/1.1 ─> the same HTTP handling as the plain listener
//! ```
//!
//! One crypto provider everywhere: aws-lc-rs, passed explicitly (no process default needed).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tollgate_proto::model::{Certificate, ResourceKey};
use tollgate_proto::validate::{normalize_host, parse_pem_certificates};

use tollgate_tls::provider;

/// Marks a request that arrived over TLS (a request extension set by the accept loop), so
/// the upstream hears `x-forwarded-proto: https`.
#[derive(Clone, Copy, Debug)]
pub struct ClientTls;

/// The certificates of one config, by host. Immutable once built.
#[derive(Default)]
pub struct CertStore {
    /// Exact host (lowercase) -> certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` kept as `example.com` -> certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts: Vec<String> = self.exact.keys().cloned().collect();
        hosts.extend(self.wildcard.keys().map(|d| format!("*.{d}")));
        hosts.sort();
        f.debug_struct("CertStore").field("hosts", &hosts).finish()
    }
}

impl CertStore {
    /// Parses every certificate with its private key; each one that does not parse, whose
    /// key does not match its certificate, or that claims a host another one claims, is
    /// reported, with the resource it is about.
    pub fn compile<'a>(
        certs: impl IntoIterator<Item = &'a Certificate>,
    ) -> Result<CertStore, Vec<(ResourceKey, String)>> {
        let mut store = CertStore::default();
        let mut owners: HashMap<String, ResourceKey> = HashMap::new();
        let mut errors = Vec::new();
        for cert in certs {
            let key = ResourceKey::new(tollgate_proto::Kind::Certificate, &cert.tenant, &cert.name);
            let certified = match certified_key(cert) {
                Ok(c) => Arc::new(c),
                Err(m) => {
                    errors.push((key, m));
                    continue;
                }
            };
            for h in &cert.hosts {
                let host = normalize_host(h);
                if let Some(owner) = owners.get(&host) {
                    errors.push((key.clone(), format!("hosts: {h:?} is also claimed by {owner}")));
                    continue;
                }
                owners.insert(host.clone(), key.clone());
                match host.strip_prefix("*.") {
                    Some(domain) => store.wildcard.insert(domain.to_string(), certified.clone()),
                    None => store.exact.insert(host, certified.clone()),
                };
            }
        }
        if errors.is_empty() {
            Ok(store)
        } else {
            Err(errors)
        }
    }

    /// The certificate for `server_name`: the exact host, else the longest matching `*.`
    /// wildcard (`*.b.example.com` before `*.example.com`; a wildcard covers any depth below
    /// its domain, as in route hosts, never the domain itself).
    pub fn lookup(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = normalize_host(server_name);
        if let Some(c) = self.exact.get(&name) {
            return Some(c);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Suffixes after each dot, longest first: `a.b.example.com` -> `b.example.com`,
        // `example.com`, `com`.
        name.match_indices('.')
            .find_map(|(i, _)| self.wildcard.get(&name[i + 1..]))
    }
}

/// Chain and private key of one certificate, checked to belong together.
fn certified_key(cert: &Certificate) -> Result<CertifiedKey, String> {
    let chain = parse_pem_certificates(&cert.cert_pem).map_err(|e| format!("cert_pem: {e}"))?;
    let Some(key_pem) = cert.key_pem.as_deref() else {
        return Err(format!(
            "key_secret: no private key was sent: the control plane could not open secret {:?} (do all control-plane nodes share one master key?)",
            cert.key_secret
        ));
    };
    // Errors never quote the key.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        format!(
            "key_secret: secret {:?} does not hold a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            cert.key_secret
        )
    })?;
    let signing = provider().key_provider.load_private_key(key).map_err(|e| {
        format!(
            "key_secret: secret {:?}: unusable private key: {e}",
            cert.key_secret
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "key_secret: the private key in secret {:?} does not belong to the certificate in cert_pem ({e})",
            cert.key_secret
        )
    })?;
    Ok(certified)
}

/// Where the TLS listener finds the certificate for a server name: the config being
/// served (`config::state::Shared`), or a fixed store in tests.
pub trait CertSource: Send + Sync + std::fmt::Debug + 'static {
    fn certificate(&self, server_name: &str) -> Option<Arc<CertifiedKey>>;
}

/// Picks the certificate for each handshake from the snapshot being served.
#[derive(Debug)]
pub struct SniResolver<S> {
    source: Arc<S>,
}

impl<S: CertSource> SniResolver<S> {
    pub fn new(source: Arc<S>) -> Self {
        Self { source }
    }

    /// The certificate for `server_name` in the current config, if any.
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = server_name?;
        let found = self.source.certificate(name);
        if found.is_none() {
            tracing::debug!(
                sni = name,
                "no certificate for this server name; handshake refused"
            );
        }
        found
    }
}

impl<S: CertSource> ResolvesServerCert for SniResolver<S> {
    /// No SNI (a client connecting by IP address), no config yet, or no certificate for
    /// the name: `None` aborts the handshake.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The TLS listener's acceptor: TLS 1.2 and 1.3, certificates by SNI, ALPN `h2` then
/// `http/1.1`.
pub fn acceptor<S: CertSource>(source: Arc<S>) -> TlsAcceptor {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(source)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests;
