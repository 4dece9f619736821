use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tollgate_proto::model::{Certificate, Spec};

use super::*;
use crate::config::state::Shared;
use crate::testutil::{compile, resources, DOC};

const CA: &str = include_str!("testdata/ca.pem");
const EXACT: (&str, &str) = (
    include_str!("testdata/exact.pem"),
    include_str!("testdata/exact.key"),
);
const WILD: (&str, &str) = (
    include_str!("testdata/wild.pem"),
    include_str!("testdata/wild.key"),
);
const DEEP: (&str, &str) = (
    include_str!("testdata/deep.pem"),
    include_str!("testdata/deep.key"),
);

fn cert(name: &str, hosts: &[&str], (pem, key): (&str, &str)) -> Certificate {
    Certificate {
        name: name.into(),
        tenant: "acme".into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        cert_pem: pem.into(),
        key_secret: format!("{name}-key"),
        key_pem: Some(key.into()),
        ..Default::default()
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    parse_pem_certificates(pem).unwrap().remove(0)
}

/// Certificates for `a.example.com`, `*.example.com` and `*.b.example.com`.
fn three() -> Vec<Certificate> {
    vec![
        cert("exact", &["a.example.com"], EXACT),
        cert("wild", &["*.example.com"], WILD),
        cert("deep", &["*.B.example.com"], DEEP),
    ]
}

#[test]
fn exact_hosts_first_then_the_longest_wildcard() {
    let store = CertStore::compile(&three()).unwrap();
    let served = |sni: &str| store.lookup(sni).map(|c| c.cert[0].clone());
    assert_eq!(served("a.example.com"), Some(der(EXACT.0)));
    assert_eq!(served("A.Example.COM"), Some(der(EXACT.0)));
    assert_eq!(served("x.example.com"), Some(der(WILD.0)));
    assert_eq!(served("x.y.example.com"), Some(der(WILD.0)));
    assert_eq!(served("x.b.example.com"), Some(der(DEEP.0)));
    assert_eq!(served("b.example.com"), Some(der(WILD.0)));
    // A wildcard never covers its own domain; unknown names get nothing.
    assert_eq!(served("example.com"), None);
    assert_eq!(served("example.org"), None);
    assert_eq!(served("com"), None);
    assert!(format!("{store:?}").contains("*.b.example.com"), "{store:?}");
}

#[test]
fn keys_that_are_missing_malformed_or_foreign_are_refused() {
    let mut no_key = cert("exact", &["a.example.com"], EXACT);
    no_key.key_pem = None;
    let mut not_pem = cert("exact", &["a.example.com"], EXACT);
    not_pem.key_pem = Some("hello".into());
    let foreign = cert("exact", &["a.example.com"], (EXACT.0, WILD.1));
    let cases = [
        (no_key, "key_secret: no private key was sent"),
        (
            not_pem,
            "key_secret: secret \"exact-key\" does not hold a PEM private key",
        ),
        (
            foreign,
            "key_secret: the private key in secret \"exact-key\" does not belong to the certificate",
        ),
    ];
    for (c, want) in cases {
        let errs = CertStore::compile([&c]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].0.kind.as_str(), errs[0].0.name.as_str()),
            ("certificate", "exact")
        );
        assert!(errs[0].1.starts_with(want), "want {want:?}, got {:?}", errs[0].1);
        assert!(!errs[0].1.contains("PRIVATE KEY"), "{}", errs[0].1);
    }
    // One host, two certificates (the control plane refuses this too).
    let twice = [
        cert("exact", &["a.example.com"], EXACT),
        cert("other", &["A.example.com"], EXACT),
    ];
    let errs = CertStore::compile(&twice).unwrap_err();
    assert!(
        errs[0].1.contains("also claimed by certificate acme/exact"),
        "{errs:?}"
    );
}

#[test]
fn a_config_with_a_bad_certificate_does_not_compile() {
    let mut all = resources(DOC);
    all.push(Spec::Certificate(cert("exact", &["a.example.com"], (EXACT.0, WILD.1))).to_resource(1));
    let state = crate::config::resources::ConfigState::from_resources(3, all).unwrap();
    let errs =
        crate::config::snapshot::Snapshot::compile(&state, &mut crate::config::snapshot::Retained::default())
            .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].name, "exact");
}

/// A TLS handshake over an in-memory pipe against the resolver: which certificate the server
/// chose and which protocol ALPN settled on, or the client's error.
async fn handshake(
    shared: &Arc<Shared>,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<(CertificateDer<'static>, Vec<u8>), String> {
    let mut roots = RootCertStore::empty();
    roots.add(der(CA)).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn({
        let acceptor = acceptor(shared.clone());
        async move { acceptor.accept(server_io).await.map(|_| ()) }
    });
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let client = TlsConnector::from(Arc::new(config))
        .connect(name, client_io)
        .await;
    let _ = server.await;
    let stream = client.map_err(|e| e.to_string())?;
    let (_, conn) = stream.get_ref();
    let served = conn.peer_certificates().unwrap()[0].clone().into_owned();
    Ok((served, conn.alpn_protocol().unwrap_or_default().to_vec()))
}

#[tokio::test]
async fn the_handshake_serves_the_certificate_of_the_sni_from_the_current_snapshot() {
    let shared = Arc::new(Shared::default());
    // No config yet: every handshake is refused.
    assert!(handshake(&shared, "a.example.com", &[b"h2"]).await.is_err());

    let with = |certs: Vec<Certificate>, version: u64| {
        let mut all = resources(DOC);
        all.extend(certs.into_iter().map(|c| Spec::Certificate(c).to_resource(1)));
        compile(version, all)
    };
    shared.install(with(three(), 1));
    let (served, alpn) = handshake(&shared, "a.example.com", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!((served, alpn.as_slice()), (der(EXACT.0), &b"h2"[..]));
    let (served, alpn) = handshake(&shared, "x.example.com", &[b"http/1.1"]).await.unwrap();
    assert_eq!((served, alpn.as_slice()), (der(WILD.0), &b"http/1.1"[..]));
    let (served, _) = handshake(&shared, "x.b.example.com", &[]).await.unwrap();
    assert_eq!(served, der(DEEP.0));
    let err = handshake(&shared, "example.org", &[b"h2"]).await.unwrap_err();
    assert!(err.contains("alert") || err.contains("handshake"), "{err}");

    // A new snapshot without the exact certificate: a.example.com now gets the wildcard,
    // from the next handshake on.
    shared.install(with(three().split_off(1), 2));
    let (served, _) = handshake(&shared, "a.example.com", &[]).await.unwrap();
    assert_eq!(served, der(WILD.0));
}
