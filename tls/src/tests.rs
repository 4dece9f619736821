use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use super::*;

/// A CA and a leaf it signed for `usage`, as PEM: (ca, cert, key).
fn pki(usage: ExtendedKeyUsagePurpose) -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["node.test".to_string()]).unwrap();
    leaf.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn files() -> TlsFiles {
    TlsFiles {
        cert: "node.pem".into(),
        key: "node.key".into(),
        ca: "ca.pem".into(),
    }
}

fn pems((ca, cert, key): (String, String, String)) -> Pems {
    Pems {
        cert: cert.into_bytes(),
        key: key.into_bytes(),
        ca: ca.into_bytes(),
    }
}

#[test]
fn a_client_certificate_of_the_ca_checks_out() {
    let id = pems(pki(ExtendedKeyUsagePurpose::ClientAuth))
        .identity(&files())
        .unwrap();
    assert_eq!(id.chain.len(), 1);
    id.verify_client().unwrap();
}

#[test]
fn a_server_only_certificate_fails_the_client_check() {
    let id = pems(pki(ExtendedKeyUsagePurpose::ServerAuth))
        .identity(&files())
        .unwrap();
    assert!(id.verify_client().is_err());
}

#[test]
fn a_certificate_of_another_ca_fails_the_client_check() {
    let (_, cert, key) = pki(ExtendedKeyUsagePurpose::ClientAuth);
    let (other_ca, _, _) = pki(ExtendedKeyUsagePurpose::ClientAuth);
    let id = pems((other_ca, cert, key)).identity(&files()).unwrap();
    assert!(id.verify_client().is_err());
}

#[test]
fn a_key_of_another_certificate_is_refused_without_quoting_it() {
    let (ca, cert, _) = pki(ExtendedKeyUsagePurpose::ClientAuth);
    let (_, _, other_key) = pki(ExtendedKeyUsagePurpose::ClientAuth);
    let e = pems((ca, cert, other_key.clone()))
        .identity(&files())
        .unwrap_err()
        .to_string();
    assert!(e.contains("node.key does not hold the key of node.pem"), "{e}");
    let body: String = other_key.lines().nth(1).unwrap().to_string();
    assert!(!e.contains(&body), "{e}");
}

#[test]
fn pem_errors_name_the_file() {
    let e = certificates(b"not a pem", Path::new("/etc/x.pem"))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "/etc/x.pem: no PEM certificate in it");
    let e = private_key(b"", Path::new("k.pem")).unwrap_err().to_string();
    assert!(e.starts_with("k.pem: no usable PEM private key"), "{e}");
    let e = read(Path::new("/nonexistent/tollgate")).unwrap_err().to_string();
    assert!(e.starts_with("reading /nonexistent/tollgate: "), "{e}");
}

#[test]
fn the_fingerprint_changes_with_any_file() {
    let p = pems(pki(ExtendedKeyUsagePurpose::ClientAuth));
    let same = Pems {
        cert: p.cert.clone(),
        key: p.key.clone(),
        ca: p.ca.clone(),
    };
    assert_eq!(p.fingerprint(), same.fingerprint());
    // Moving a byte from one file to the next is a change too (lengths are hashed).
    let mut shifted = Pems {
        cert: p.cert.clone(),
        key: p.key.clone(),
        ca: p.ca.clone(),
    };
    let b = shifted.cert.pop().unwrap();
    shifted.key.insert(0, b);
    assert_ne!(p.fingerprint(), shifted.fingerprint());
}

#[test]
fn flags_come_all_three_or_none() {
    assert_eq!(TlsFiles::from_flags(None, None, None).unwrap(), None);
    let all = TlsFiles::from_flags(Some("c".into()), Some("k".into()), Some("a".into())).unwrap();
    assert_eq!(
        all,
        Some(TlsFiles {
            cert: "c".into(),
            key: "k".into(),
            ca: "a".into()
        })
    );
    let e = TlsFiles::from_flags(Some("c".into()), None, None).unwrap_err();
    assert!(e.ends_with("(missing --tls-key, --tls-ca)"), "{e}");
}

#[test]
fn a_file_error_names_the_file_as_the_pem_errors_do() {
    let e = TlsError::file(Path::new("/etc/ca.pem"), "no root anchors");
    assert!(
        matches!(&e, TlsError::File { path, reason } if path == "/etc/ca.pem" && reason == "no root anchors")
    );
    assert_eq!(e.to_string(), "/etc/ca.pem: no root anchors");
}
