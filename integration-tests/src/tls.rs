//! TLS for sandbox tests, all generated at test time (rcgen) and on loopback:
//!
//! - [`TestCa`]: a throw-away certificate authority issuing server certificates ([`Leaf`]).
//! - [`connect`]: a TLS client (tokio-rustls) trusting one test CA, with SNI and ALPN of the
//!   test's choosing; [`served_certificate`] says which certificate the server presented.
//! - [`https_upstream`]: an HTTPS/1.1 server answering every request `200` with a JSON echo
//!   `{"tls": true, "path": ..., "headers": {...}}`.
//!
//! One rustls crypto provider, aws-lc-rs, passed explicitly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long [`connect`] may take (TCP and handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its private key, PEM, plus the certificate's DER for comparing
/// with what a server presented.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA certificate, PEM (for `tls.ca_pem`).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `hosts` (DNS names or IP addresses) with a fresh key.
    pub fn leaf(&self, hosts: &[&str]) -> Leaf {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, hosts[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &*self.issuer).expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Opens a TLS connection to `addr` asking for `sni`, trusting only `ca`, offering `alpn`.
/// Bounded by 5 s; a refused handshake is an error.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(std::io::Error::other)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tls connect timed out"))?
}

/// The end-entity certificate the server presented.
pub fn served_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates().expect("a server certificate")[0]
        .clone()
        .into_owned()
}

/// The protocol ALPN settled on (empty when none).
pub fn alpn(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.alpn_protocol().unwrap_or_default().to_vec()
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let body = serde_json::json!({ "tls": true, "path": req.uri().path(), "headers": headers });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response"))
}

/// Starts an HTTPS/1.1 upstream on loopback presenting `leaf`; runs until the test's runtime
/// ends.
pub async fn https_upstream(leaf: &Leaf) -> SocketAddr {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("leaf key PEM");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the upstream");
    let addr = listener.local_addr().expect("upstream address");
    tollgate_testkit::serve::http1(listener, Some(TlsAcceptor::from(Arc::new(config))), echo);
    addr
}
