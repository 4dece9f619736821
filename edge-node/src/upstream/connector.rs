//! Connections towards upstreams: plain TCP for `http` targets, rustls for `https` ones
//! (hyper-rustls over hyper-util's `HttpConnector`).
//!
//! ```text
//!  target URL ──http──> TCP (connect timeout)
//!             └─https─> TCP ─> TLS: SNI = tls.server_name or the target's host
//!                              verify against tls.ca_pem, else Mozilla's roots (webpki-roots)
//!                              (tls.insecure_skip_verify: no chain or name check at all)
//! ```
//!
//! Default roots come from `webpki-roots` (compiled in) rather than the host's store
//! (`rustls-native-certs`): the edge then trusts the same roots on every machine and in
//! minimal containers that ship no CA bundle, and an upstream on a private CA names it in
//! `tls.ca_pem`. ALPN offers `http/1.1` only: upstreams are spoken to in HTTP/1.1.
//!
//! The TLS handshake is not covered by the connect timeout; the upstream's request timeout
//! (which spans connecting) bounds it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tollgate_proto::model::UpstreamTls;
use tollgate_proto::validate::parse_pem_certificates;

use tollgate_tls::provider;

/// The connector of every upstream client: `http` and `https` targets alike.
pub type UpstreamConnector = HttpsConnector<HttpConnector>;

/// A connector with `connect_timeout` for TCP and `tls` for `https` targets. The error names
/// the field that is wrong (`tls.ca_pem: ...`).
pub fn connector(connect_timeout: Duration, tls: Option<&UpstreamTls>) -> Result<UpstreamConnector, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    // The https layer above handles the scheme.
    http.enforce_http(false);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(client_config(tls)?)
        .https_or_http();
    let builder = match tls.and_then(|t| t.server_name.as_deref()) {
        Some(name) => {
            let name = ServerName::try_from(name.to_string())
                .map_err(|e| format!("tls.server_name: invalid server name {name:?}: {e}"))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    Ok(builder.enable_http1().wrap_connector(http))
}

/// The rustls client config for an upstream's TLS options.
fn client_config(tls: Option<&UpstreamTls>) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions");
    let config = match tls {
        Some(t) if t.insecure_skip_verify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerification(provider())))
            .with_no_client_auth(),
        Some(UpstreamTls {
            ca_pem: Some(pem), ..
        }) => {
            let mut roots = RootCertStore::empty();
            for (i, der) in parse_pem_certificates(pem)
                .map_err(|e| format!("tls.ca_pem: {e}"))?
                .into_iter()
                .enumerate()
            {
                roots
                    .add(der)
                    .map_err(|e| format!("tls.ca_pem: certificate {i} cannot be a trust root: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .with_root_certificates(default_roots().clone())
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Mozilla's roots, built once.
pub(crate) fn default_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()))
}

/// `insecure_skip_verify`: accepts any certificate for any name. Handshake signatures are
/// still checked (the peer holds the key of the certificate it shows), which stops nobody who
/// can present a certificate of their own: anyone on the path can read and change traffic.
#[derive(Debug)]
struct SkipVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = include_str!("../listen/tls/testdata/ca.pem");
    const KEY: &str = include_str!("../listen/tls/testdata/exact.key");

    #[test]
    fn options_become_client_configs() {
        let default = client_config(None).unwrap();
        assert_eq!(default.alpn_protocols, Vec::<Vec<u8>>::new());
        let with_ca = UpstreamTls {
            ca_pem: Some(CA.into()),
            ..Default::default()
        };
        assert!(client_config(Some(&with_ca)).is_ok());
        let insecure = UpstreamTls {
            insecure_skip_verify: true,
            ..Default::default()
        };
        assert!(client_config(Some(&insecure)).is_ok());
        let not_a_ca = UpstreamTls {
            ca_pem: Some(KEY.into()),
            ..Default::default()
        };
        let err = client_config(Some(&not_a_ca)).unwrap_err();
        assert!(err.starts_with("tls.ca_pem: "), "{err}");
        let bad_name = UpstreamTls {
            server_name: Some("not a name".into()),
            ..Default::default()
        };
        let err = connector(Duration::from_secs(1), Some(&bad_name)).err().unwrap();
        assert!(err.starts_with("tls.server_name: "), "{err}");
        assert!(!default_roots().is_empty());
    }
}
