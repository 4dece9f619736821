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

use std::time::Duration;

use tollgate_tls::Pems;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Where the edge's certificate and key and the cluster CA are (PEM files).
pub use tollgate_tls::TlsFiles as ClusterTlsFiles;

/// Longest TLS handshake with a control plane.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
        let pems = files.read().map_err(|e| e.to_string())?;
        let current = build(&files, &pems)?;
        Ok(ClusterTls {
            fingerprint: pems.fingerprint(),
            cert_pem: pems.cert,
            files,
            current,
        })
    }

    /// The config for the next connection: the files as they are now if they changed and
    /// check out, else the last good ones.
    pub fn config(&mut self) -> ClientTlsConfig {
        match self.files.read() {
            Ok(pems) => {
                let fp = pems.fingerprint();
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

/// Checks the files the way a handshake would use them, then builds tonic's config.
fn build(files: &ClusterTlsFiles, p: &Pems) -> Result<ClientTlsConfig, String> {
    let identity = p.identity(files).map_err(|e| e.to_string())?;
    // Not fatal: the control plane decides. Said here because its refusal reaches the edge
    // only as a closed connection.
    if let Err(e) = identity.verify_client() {
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
