//! Handshakes over loopback between [`incoming`] and [`Connector`], with throw-away CAs.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use super::*;

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// (certificate PEM, key PEM) for `sans`, usable by servers and clients.
    fn issue(&self, sans: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, sans[0]);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write_files(dir: &Path, name: &str, ca: &Ca, (cert, key): &(String, String)) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.ca, ca.0.pem()).unwrap();
    files
}

fn client(ca: &Ca, identity: Option<&(String, String)>) -> Connector {
    let roots = roots(ca.0.pem().as_bytes(), Path::new("ca.pem")).unwrap();
    let identity = identity.map(|(cert, key)| {
        (
            certificates(cert.as_bytes(), Path::new("c.pem")).unwrap(),
            private_key(key.as_bytes(), Path::new("c.key")).unwrap(),
        )
    });
    Connector::fixed(client_config(roots, identity).unwrap())
}

type Incoming = ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, io::Error>>;

async fn server(tls: Arc<ClusterTls>) -> (SocketAddr, Incoming) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, incoming(listener, tls))
}

use std::net::SocketAddr;

/// Connects; the server, once it accepted the client, speaks first (as h2 servers do). The
/// error (with its TLS reason) when the connection fails, the server's certificate otherwise.
async fn exchange(
    mut connector: Connector,
    uri: &str,
    incoming: &mut Incoming,
) -> Result<CertificateDer<'static>, String> {
    let uri: Uri = uri.parse().unwrap();
    let failed = |e: io::Error| tls_failure(&e).unwrap_or(e.to_string());
    let client = connector.call(uri);
    tokio::pin!(client);
    // The client cannot finish before the server spoke, unless it failed.
    let mut accepted = tokio::select! {
        r = &mut client => return Err(failed(r.err().expect("connected without the server speaking"))),
        s = tokio::time::timeout(Duration::from_secs(5), incoming.next()) => match s {
            Ok(Some(Ok(s))) => s,
            _ => return Err(failed(client.await.err().expect("connected but not accepted"))),
        },
    };
    accepted.write_all(b"y").await.unwrap();
    accepted.flush().await.unwrap();
    let io = client.await.map_err(failed)?;
    let mut stream = io.into_inner();
    let served = stream.session().peer_certificates().unwrap()[0].clone();
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"y", "the bytes read while connecting are read again");
    Ok(served)
}

fn leaf_der(pem: &str) -> CertificateDer<'static> {
    certificates(pem.as_bytes(), Path::new("x")).unwrap().remove(0)
}

#[tokio::test]
async fn only_clients_of_the_cluster_ca_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("cluster"), Ca::new("other"));
    let node = ca.issue(&["127.0.0.1"]);
    let tls =
        Arc::new(ClusterTls::load(write_files(dir.path(), "cp1", &ca, &node), "127.0.0.1:7700").unwrap());
    let (addr, mut incoming) = server(tls.clone()).await;
    let url = format!("http://{addr}");

    // A peer of the same CA, and the node itself (its own connector).
    let served = exchange(client(&ca, Some(&ca.issue(&["edge"]))), &url, &mut incoming).await;
    assert_eq!(served.unwrap(), leaf_der(&node.0));
    exchange(tls.connector(), &url, &mut incoming).await.unwrap();

    // No client certificate, or one of another CA: refused by the server.
    let err = exchange(client(&ca, None), &url, &mut incoming)
        .await
        .unwrap_err();
    assert!(err.contains("requires a client certificate"), "{err}");
    let err = exchange(client(&ca, Some(&other.issue(&["edge"]))), &url, &mut incoming)
        .await
        .unwrap_err();
    assert!(err.contains("the server refused our client certificate"), "{err}");

    // A client that does not trust the cluster CA refuses the server.
    let err = exchange(client(&other, Some(&other.issue(&["edge"]))), &url, &mut incoming)
        .await
        .unwrap_err();
    assert!(
        err.contains("the server's certificate: not issued by the cluster CA"),
        "{err}"
    );

    // The server's certificate must be valid for the host dialled.
    let err = exchange(
        client(&ca, Some(&ca.issue(&["edge"]))),
        &format!("http://localhost:{}", addr.port()),
        &mut incoming,
    )
    .await
    .unwrap_err();
    assert!(err.contains("not valid for the host"), "{err}");
}

#[test]
fn a_node_certificate_peers_would_refuse_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("cluster"), Ca::new("other"));
    let err = ClusterTls::load(
        write_files(dir.path(), "a", &ca, &ca.issue(&["cp1.internal"])),
        "127.0.0.1:7700",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not valid for the host"), "{err}");

    let files = write_files(dir.path(), "b", &ca, &other.issue(&["127.0.0.1"]));
    let err = ClusterTls::load(files, "127.0.0.1:7700").unwrap_err().to_string();
    assert!(err.contains("not issued by the cluster CA"), "{err}");

    let files = write_files(dir.path(), "c", &ca, &ca.issue(&["127.0.0.1"]));
    std::fs::write(&files.key, ca.issue(&["127.0.0.1"]).1).unwrap();
    let err = ClusterTls::load(files, "127.0.0.1:7700").unwrap_err().to_string();
    assert!(err.contains("does not hold the key"), "{err}");

    let ok = write_files(dir.path(), "d", &ca, &ca.issue(&["cp1.internal", "127.0.0.1"]));
    ClusterTls::load(ok.clone(), "cp1.internal:7700").unwrap();
    ClusterTls::load(ok, "[::1]:7700").unwrap_err();

    assert!(TlsFiles::from_flags(None, None, None).unwrap().is_none());
    let err = TlsFiles::from_flags(Some("c".into()), None, Some("ca".into())).unwrap_err();
    assert!(err.contains("missing --tls-key"), "{err}");
}

#[tokio::test]
async fn rotated_files_are_used_by_new_connections_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("cluster"), Ca::new("other"));
    let first = ca.issue(&["127.0.0.1"]);
    let files = write_files(dir.path(), "cp1", &ca, &first);
    let tls = Arc::new(ClusterTls::load(files.clone(), "127.0.0.1:7700").unwrap());
    let (addr, mut incoming) = server(tls.clone()).await;
    let url = format!("http://{addr}");
    let peer = ca.issue(&["peer"]);
    assert!(!tls.reload().unwrap(), "unchanged files are not reloaded");

    let second = ca.issue(&["127.0.0.1"]);
    write_files(dir.path(), "cp1", &ca, &second);
    assert!(tls.reload().unwrap());
    let served = exchange(client(&ca, Some(&peer)), &url, &mut incoming)
        .await
        .unwrap();
    assert_eq!(served, leaf_der(&second.0));

    // Half-written (new certificate, old key) and foreign certificates are refused; the
    // current one stays in use, and a refused version is reported once.
    std::fs::write(&files.cert, ca.issue(&["127.0.0.1"]).0).unwrap();
    assert!(tls.reload().is_err());
    assert!(!tls.reload().unwrap());
    write_files(dir.path(), "cp1", &ca, &other.issue(&["127.0.0.1"]));
    assert!(tls.reload().is_err());
    let served = exchange(client(&ca, Some(&peer)), &url, &mut incoming)
        .await
        .unwrap();
    assert_eq!(served, leaf_der(&second.0));
}

#[test]
fn endpoints_match_the_mode() {
    let c = Connector::fixed(client_config(Arc::new(RootCertStore::empty()), None).unwrap());
    assert_eq!(
        endpoint("https://127.0.0.1:7700", Some(&c))
            .unwrap()
            .uri()
            .to_string(),
        "http://127.0.0.1:7700/"
    );
    assert!(endpoint("http://127.0.0.1:7700", Some(&c))
        .unwrap_err()
        .contains("use an https:// URL"));
    assert!(endpoint("https://127.0.0.1:7700", None)
        .unwrap_err()
        .contains("--tls-ca"));
    assert!(endpoint("http://127.0.0.1:7700", None).is_ok());
    assert_eq!(host_of("[::1]:7700"), "::1");
    assert_eq!(host_of("cp1.internal:7700"), "cp1.internal");
}
