//! TLS groundwork shared by the control plane (`mtls.rs`: its listener, its outgoing
//! channels, the CLI's connections) and the edge (`config/cluster_tls.rs`: the config
//! stream; `listen/tls.rs` and the upstream connector): the one crypto provider, the three
//! PEM files of a cluster identity, and the checks a handshake would make of them, run
//! before a certificate is used.
//!
//! ```text
//!  TlsFiles ─read─> Pems ─fingerprint─> changed?    (rotation: callers poll and compare)
//!                     └─ roots / certificates / private_key ─> identity(): key matches its
//!                        certificate ─> verify_client(): chains to the CA as a client
//! ```
//!
//! Invariant: no I/O but reading the files it is given, and no error quotes a key.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// The process's one rustls crypto provider (aws-lc-rs), passed explicitly everywhere: no
/// code relies on a process default.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Identity(String),
}

impl TlsError {
    /// What is wrong with the content of the file at `path`: `{path}: {reason}`.
    pub fn file(path: &Path, reason: impl std::fmt::Display) -> TlsError {
        TlsError::File {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Where a certificate (PEM, leaf first), its private key (PEM) and the cluster CA (PEM;
/// several certificates are all trusted, for a CA rotation) are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// All three or none (`--tls-cert`, `--tls-key`, `--tls-ca`).
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, String> {
        match (cert, key, ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            (None, None, None) => Ok(None),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    ("--tls-cert", cert.is_none()),
                    ("--tls-key", key.is_none()),
                    ("--tls-ca", ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, missing)| missing.then_some(flag))
                .collect();
                Err(format!(
                    "mTLS needs --tls-cert, --tls-key and --tls-ca together (missing {})",
                    missing.join(", ")
                ))
            }
        }
    }

    /// The three files as they are now.
    pub fn read(&self) -> Result<Pems, TlsError> {
        Ok(Pems {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
            ca: read(&self.ca)?,
        })
    }
}

/// Reads one file; the error names it.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// One version of the three files.
pub struct Pems {
    pub cert: Vec<u8>,
    /// Never printed.
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for Pems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pems").finish_non_exhaustive()
    }
}

impl Pems {
    /// A digest of all three files: equal digests, same files (rotation is detected by
    /// comparing it).
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [&self.cert, &self.key, &self.ca] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        ctx.finish().as_ref().to_vec()
    }

    /// The certificate chain and key, checked to belong together, and the CA as trust roots.
    pub fn identity(&self, files: &TlsFiles) -> Result<Identity, TlsError> {
        let roots = roots(&self.ca, &files.ca)?;
        let chain = certificates(&self.cert, &files.cert)?;
        let key = private_key(&self.key, &files.key)?;
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|e| {
            TlsError::Identity(format!(
                "{} does not hold the key of {}: {e}",
                files.key.display(),
                files.cert.display()
            ))
        })?;
        Ok(Identity { roots, chain, key })
    }
}

/// A checked certificate chain with its key, and the roots it is meant to chain to.
pub struct Identity {
    pub roots: Arc<RootCertStore>,
    /// Leaf first; at least one.
    pub chain: Vec<CertificateDer<'static>>,
    /// Never printed.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Whether the chain would pass a server's client-certificate check against the roots.
    pub fn verify_client(&self) -> Result<(), rustls::Error> {
        verify_client(&self.roots, &self.chain)
    }
}

/// The trust roots in a PEM file: every certificate in it.
pub fn roots(pem: &[u8], path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, der) in certificates(pem, path)?.into_iter().enumerate() {
        roots
            .add(der)
            .map_err(|e| TlsError::file(path, format!("certificate {i} cannot be a trust root: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The certificates in a PEM file, at least one.
pub fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1). Errors never quote the key.
pub fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TlsError::file(path, format!("no usable PEM private key: {e}")))
}

/// Checks `chain` (leaf first, at least one) as a server checks a client certificate: it
/// chains to `roots` and may be used for client authentication.
pub fn verify_client(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
}

#[cfg(test)]
mod tests;
