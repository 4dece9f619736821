//! `tollgate cert`: a private CA and certificates for mTLS inside the cluster, made offline
//! (rcgen on aws-lc-rs; no server involved).
//!
//! ```text
//!  cert ca --out DIR                      ─> DIR/ca.pem, DIR/ca.key (0600)
//!  cert issue --ca DIR --name N --san H.. ─> OUT/N.pem, OUT/N.key (0600), signed by DIR's CA,
//!                                            for servers and clients alike (EKU serverAuth +
//!                                            clientAuth); each --san an IP address or DNS name
//! ```
//!
//! Files are written whole (a temporary file renamed into place), so a node watching them
//! never reads half a certificate; existing files are kept unless `--force`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

use crate::client::{CliResult, Failure};

#[derive(Subcommand)]
pub enum CertCmd {
    /// Create a certificate authority: DIR/ca.pem and DIR/ca.key (owner-only)
    Ca(CaArgs),
    /// Issue a certificate signed by the CA, usable as server and client certificate:
    /// NAME.pem and NAME.key (owner-only)
    Issue(IssueArgs),
}

#[derive(Args)]
pub struct CaArgs {
    /// Directory for ca.pem and ca.key (created when missing)
    #[arg(long)]
    out: PathBuf,
    /// The CA's common name (default: "Tollgate cluster CA" and a random id, so that two
    /// clusters' CAs never share a name)
    #[arg(long)]
    name: Option<String>,
    /// Days the CA is valid
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// Overwrite existing files
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct IssueArgs {
    /// Directory holding the CA (ca.pem and ca.key)
    #[arg(long)]
    ca: PathBuf,
    /// The certificate's name: its common name and the file names NAME.pem, NAME.key
    #[arg(long)]
    name: String,
    /// A host the holder is reached at, IP address or DNS name (repeatable); control-plane
    /// nodes need the host of their --advertise/--grpc address. None: a client-only certificate
    #[arg(long = "san", value_name = "HOST")]
    sans: Vec<String>,
    /// Directory for the files (default: the current directory)
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Days the certificate is valid
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Overwrite existing files (rotation: nodes pick up the new files within seconds)
    #[arg(long)]
    force: bool,
}

/// `--tls-cert`, `--tls-key`, `--tls-ca` of the `control-plane` and `edge` servers.
#[derive(Args)]
pub struct ClusterTlsArgs {
    /// This process's certificate (PEM, `tollgate cert issue`); with --tls-key and --tls-ca
    /// every connection inside the cluster is mutual TLS. Re-read when it changes
    #[arg(long, env = "TOLLGATE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, env = "TOLLGATE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): the only issuer trusted, for servers and clients alike
    #[arg(long, env = "TOLLGATE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

impl ClusterTlsArgs {
    /// Takes what was given before the subcommand (`tollgate --tls-ca F control-plane ...`,
    /// parsed as the operator flags of the same names) where the subcommand has nothing.
    pub fn inherit(&mut self, g: &crate::Global) {
        for (mine, global) in [
            (&mut self.tls_cert, &g.tls_cert),
            (&mut self.tls_key, &g.tls_key),
            (&mut self.tls_ca, &g.tls_ca),
        ] {
            if mine.is_none() {
                mine.clone_from(global);
            }
        }
    }

    /// All three files or none.
    pub fn files(self) -> Result<Option<tollgate_control_plane::mtls::TlsFiles>, Failure> {
        tollgate_control_plane::mtls::TlsFiles::from_flags(self.tls_cert, self.tls_key, self.tls_ca)
            .map_err(usage)
    }
}

pub fn cert(cmd: CertCmd) -> CliResult {
    match cmd {
        CertCmd::Ca(a) => ca(a),
        CertCmd::Issue(a) => issue(a),
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 2,
    }
}

fn ca(a: CaArgs) -> CliResult {
    let (cert_path, key_path) = (a.out.join("ca.pem"), a.out.join("ca.key"));
    refuse_overwrite(&[&cert_path, &key_path], a.force)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_failure)?;
    params.distinguished_name = DistinguishedName::new();
    let name = match a.name {
        Some(n) => n,
        None => {
            let id = tollgate_control_plane::secrets::random_token("")
                .map_err(|e| Failure::other(format!("randomness: {e}")))?;
            format!("Tollgate cluster CA {}", &id[..12])
        }
    };
    params.distinguished_name.push(DnType::CommonName, name.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let until = validity(&mut params, a.days)?;
    let key = KeyPair::generate().map_err(rcgen_failure)?;
    let cert = params.self_signed(&key).map_err(rcgen_failure)?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::other(format!("creating {}: {e}", a.out.display())))?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    println!(
        "wrote {} ({name:?}, valid until {until}) and {}",
        cert_path.display(),
        key_path.display()
    );
    println!(
        "keep ca.key offline once the certificates are issued; every node, edge and operator gets ca.pem"
    );
    Ok(())
}

fn issue(a: IssueArgs) -> CliResult {
    check_name(&a.name)?;
    for san in &a.sans {
        check_san(san)?;
    }
    let (ca_cert_path, ca_key_path) = (a.ca.join("ca.pem"), a.ca.join("ca.key"));
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| Failure::other(format!("reading {}: {e}", p.display())))
    };
    let (ca_pem, ca_key_pem) = (read(&ca_cert_path)?, read(&ca_key_path)?);
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| {
        Failure::other(format!(
            "{}: not a usable PEM private key: {e}",
            ca_key_path.display()
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| {
        Failure::other(format!(
            "{}: not a usable CA certificate: {e}",
            ca_cert_path.display()
        ))
    })?;

    let (cert_path, key_path) = (
        a.out.join(format!("{}.pem", a.name)),
        a.out.join(format!("{}.key", a.name)),
    );
    for p in [&cert_path, &key_path] {
        if same_file(p, &ca_cert_path) || same_file(p, &ca_key_path) {
            return Err(usage(format!(
                "{} is the CA's own file: choose another --name",
                p.display()
            )));
        }
    }
    refuse_overwrite(&[&cert_path, &key_path], a.force)?;

    let mut params = CertificateParams::new(a.sans.clone()).map_err(rcgen_failure)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, a.name.as_str());
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let until = validity(&mut params, a.days)?;
    let key = KeyPair::generate().map_err(rcgen_failure)?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_failure)?;
    // A CA key that does not belong to ca.pem signs certificates nobody accepts: say so now.
    tollgate_control_plane::mtls::check_client_certificate(ca_pem.as_bytes(), cert.pem().as_bytes())
        .map_err(|e| {
            Failure::other(format!(
                "the new certificate does not verify against {} ({e}): does {} belong to it?",
                ca_cert_path.display(),
                ca_key_path.display()
            ))
        })?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::other(format!("creating {}: {e}", a.out.display())))?;
    // The key first: a node reloading between the two renames sees a pair that does not
    // match, refuses it, and takes the next poll's.
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    let names = if a.sans.is_empty() {
        "no --san: a client certificate only".to_string()
    } else {
        format!("for {}", a.sans.join(", "))
    };
    println!(
        "wrote {} ({names}; valid until {until}) and {}",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

fn rcgen_failure(e: rcgen::Error) -> Failure {
    Failure::other(format!("creating the certificate: {e}"))
}

fn check_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "--name {name:?}: use letters, digits, '-', '_' and '.' (it names the files)"
        )))
    }
}

fn check_san(san: &str) -> Result<(), Failure> {
    if san.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let name = san.strip_prefix("*.").unwrap_or(san);
    if san.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(usage(format!(
            "--san {san:?} is neither an IP address nor a DNS name"
        )))
    }
}

fn refuse_overwrite(paths: &[&Path], force: bool) -> Result<(), Failure> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if existing.is_empty() {
        Ok(())
    } else {
        Err(Failure::other(format!(
            "{} already {} (pass --force to replace)",
            existing.join(" and "),
            if existing.len() == 1 { "exists" } else { "exist" }
        )))
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        dir.canonicalize()
            .ok()
            .map(|d| d.join(p.file_name().unwrap_or_default()))
    };
    matches!((canonical(a), canonical(b)), (Some(x), Some(y)) if x == y)
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`; `private`
/// files are readable by their owner only.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::other(format!("writing {}: {e}", path.display()));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(fail)
}

/// Sets `params` valid from yesterday (clock skew) for `days` days; returns the last day.
fn validity(params: &mut CertificateParams, days: u32) -> Result<String, Failure> {
    if days == 0 {
        return Err(usage("--days must be at least 1"));
    }
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + i64::from(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn names_and_sans_are_checked() {
        assert!(check_name("cp1").is_ok());
        assert!(check_name("edge-1.internal").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            assert_eq!(check_name(bad).unwrap_err().code, 2, "{bad}");
        }
        for good in ["127.0.0.1", "::1", "cp1.internal", "localhost", "*.cluster.local"] {
            assert!(check_san(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "-x.com", "x..com", "http://x"] {
            assert_eq!(check_san(bad).unwrap_err().code, 2, "{bad}");
        }
    }

    #[test]
    fn ca_and_issue_write_files_and_refuse_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let ca_args = |force| CaArgs {
            out: pki.clone(),
            name: None,
            days: 30,
            force,
        };
        ca(ca_args(false)).unwrap();
        assert!(ca(ca_args(false)).unwrap_err().message.contains("--force"));
        let issue_args = |name: &str, force| IssueArgs {
            ca: pki.clone(),
            name: name.into(),
            sans: vec!["127.0.0.1".into(), "cp1.internal".into()],
            out: dir.path().join("out"),
            days: 10,
            force,
        };
        issue(issue_args("cp1", false)).unwrap();
        let first = std::fs::read(dir.path().join("out/cp1.pem")).unwrap();
        assert!(issue(issue_args("cp1", false))
            .unwrap_err()
            .message
            .contains("already exist"));
        issue(issue_args("cp1", true)).unwrap();
        assert_ne!(std::fs::read(dir.path().join("out/cp1.pem")).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in ["pki/ca.key", "out/cp1.key"] {
                let mode = std::fs::metadata(dir.path().join(key))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }
        let ca_pem = std::fs::read(pki.join("ca.pem")).unwrap();
        let cert = std::fs::read(dir.path().join("out/cp1.pem")).unwrap();
        tollgate_control_plane::mtls::check_client_certificate(&ca_pem, &cert).unwrap();

        // The CA's own files are never issued over.
        let mut over_ca = issue_args("ca", true);
        over_ca.out = pki.clone();
        assert_eq!(issue(over_ca).unwrap_err().code, 2);
        // Another CA's key does not match ca.pem: refused before anything is written.
        let other = dir.path().join("other");
        ca(CaArgs {
            out: other.clone(),
            name: Some("other".into()),
            days: 30,
            force: false,
        })
        .unwrap();
        std::fs::copy(other.join("ca.key"), pki.join("ca.key")).unwrap();
        let err = issue(issue_args("cp2", false)).unwrap_err();
        assert!(err.message.contains("does not verify"), "{}", err.message);
        assert!(!dir.path().join("out/cp2.pem").exists());
    }
}
