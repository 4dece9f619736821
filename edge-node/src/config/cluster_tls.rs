//! mTLS towards the control plane (`--tls-ca`, `--tls-cert`, `--tls-key`): the config stream
//! presents this edge's certificate and trusts the cluster CA only, checking each control
//! plane's certificate against the host of its `https://` URL.
//!
//! ```text
//!  each (re)connection ─> read the three files ─ unchanged ─> the current config
//!                                              └ changed ──> check (parse, key matches) ─ ok ──> new config
//!                                                                                   └ bad ─> warn, keep current
//! ```
//!
//! The files are read again before every connection, so a rotated certificate is used from
//! the next reconnection on; the open stream keeps the connection it has. The handshake
//! itself is tonic's (rustls, aws-lc-rs, ALPN h2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::listen::tls::provider;

/// Longest TLS handshake with a control plane.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the edge's certificate and key and the cluster CA are (PEM files).
#[derive(Clone, Debug)]
pub struct ClusterTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The edge's client identity towards the control plane, re-read before each connection.
#[derive(Clone)]
pub struct ClusterTls {
    files: ClusterTlsFiles,
    /// Holds the private key: never printed.
    current: ClientTlsConfig,
    /// The certificate `current` presents (PEM).
    cert_pem: Vec<u8>,
    fingerprint: Vec<u8>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Reads and checks the files; an error names the file and what is wrong with it.
    pub fn load(files: ClusterTlsFiles) -> Result<ClusterTls, String> {
        let pems = read(&files)?;
        let current = build(&files, &pems)?;
        Ok(ClusterTls {
            fingerprint: fingerprint(&pems),
            cert_pem: pems.cert,
            files,
            current,
        })
    }

    /// The config for the next connection: the files as they are now if they changed and
    /// check out, else the last good ones.
    pub fn config(&mut self) -> ClientTlsConfig {
        match read(&self.files) {
            Ok(pems) => {
                let fp = fingerprint(&pems);
                if fp != self.fingerprint {
                    // Remembered either way, so a refused version is reported once.
                    self.fingerprint = fp;
                    match build(&self.files, &pems) {
                        Ok(config) => {
                            tracing::info!(cert = %self.files.cert.display(), "cluster tls certificate reloaded");
                            self.current = config;
                            self.cert_pem = pems.cert;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster tls files changed but were refused; keeping the current certificate")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster tls files; keeping the current certificate")
            }
        }
        self.current.clone()
    }
}

struct Pems {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(files: &ClusterTlsFiles) -> Result<Pems, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    Ok(Pems {
        ca: read(&files.ca)?,
        cert: read(&files.cert)?,
        key: read(&files.key)?,
    })
}

fn fingerprint(p: &Pems) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [&p.ca, &p.cert, &p.key] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    ctx.finish().as_ref().to_vec()
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Checks the files the way a handshake would use them, then builds tonic's config.
fn build(files: &ClusterTlsFiles, p: &Pems) -> Result<ClientTlsConfig, String> {
    let mut roots = RootCertStore::empty();
    for (i, der) in certificates(&p.ca, &files.ca)?.into_iter().enumerate() {
        roots.add(der).map_err(|e| {
            format!(
                "{}: certificate {i} cannot be a trust root: {e}",
                files.ca.display()
            )
        })?;
    }
    let chain = certificates(&p.cert, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&p.key)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", files.key.display()))?;
    CertifiedKey::from_der(chain.clone(), key, &provider()).map_err(|e| {
        format!(
            "{} does not hold the key of {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    // Not fatal: the control plane decides. Said here because its refusal reaches the edge
    // only as a closed connection.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
        .build()
        .map_err(|e| format!("{}: {e}", files.ca.display()))?;
    let (leaf, intermediates) = chain.split_first().expect("certificates() returns at least one");
    if let Err(e) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        tracing::warn!(cert = %files.cert.display(), ca = %files.ca.display(), error = %e, "this edge's certificate does not verify against the cluster CA; control planes will refuse it");
    }
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&p.ca))
        .identity(Identity::from_pem(&p.cert, &p.key))
        .timeout(HANDSHAKE_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["edge".to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &**ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn files_are_checked_and_reread_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let files = ClusterTlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("edge.pem"),
            key: dir.path().join("edge.key"),
        };
        let ca = ca("cluster");
        let (cert, key) = leaf(&ca);
        std::fs::write(&files.ca, ca.pem()).unwrap();
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let mut tls = ClusterTls::load(files.clone()).unwrap();
        let before = tls.fingerprint.clone();
        tls.config();
        assert_eq!(tls.fingerprint, before, "unchanged files keep their config");

        // A key of another certificate: refused at start; after a start, kept out.
        let (_, other_key) = leaf(&ca);
        std::fs::write(&files.key, &other_key).unwrap();
        let err = ClusterTls::load(files.clone()).unwrap_err();
        assert!(err.contains("does not hold the key"), "{err}");
        tls.config();
        assert_eq!(tls.cert_pem, cert.as_bytes(), "the good identity stays in use");

        let (new_cert, new_key) = leaf(&ca);
        std::fs::write(&files.cert, &new_cert).unwrap();
        std::fs::write(&files.key, &new_key).unwrap();
        tls.config();
        assert_eq!(tls.cert_pem, new_cert.as_bytes(), "rotated identity in use");

        std::fs::write(&files.ca, "not pem").unwrap();
        let err = ClusterTls::load(files).unwrap_err();
        assert!(err.contains("ca.pem"), "{err}");
    }
}
