//! The last-known-good config: `<data_dir>/lkg.json`, written after every applied config and
//! read at startup so the edge serves without a reachable control plane, also after a
//! restart.
//!
//! The config holds secrets in the clear (TLS private keys, AI provider keys: the control
//! plane opens them for the stream), so the file seals it: a JSON envelope
//! `{format, version, key_id, nonce, sealed}` whose `sealed` is the resources, AES-256-GCM
//! encrypted under a key derived (HKDF-SHA256) from the edge's join token. The data
//! directory alone, a backup of it or a copied file, then reveals nothing: the token comes
//! from the operator on every start. An edge without a join token (a control plane without
//! auth, loopback development) keeps a random key in `<data_dir>/lkg.key` instead, which
//! guards only a copy of the file alone. The format, version and key id are the AEAD's
//! associated data, so an edited field, a torn write or a changed byte is refused whole,
//! never half-loaded; a file sealed under another key (a rotated token) is reported as
//! such and ignored. Files of format 1 (plaintext, checksummed) are still read, so an
//! upgraded edge serves through a control-plane outage; every write is format 2.
//!
//! Writes go to a temporary file that is fsynced and renamed over the old one (then the
//! directory is fsynced), so a crash leaves the old or the new file. Both files are
//! readable by their owner only (mode 0600, set before anything is written).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tollgate_proto::keys::{hex, sha256_hex, unhex};
use tollgate_proto::v1;

use crate::config::resources::ConfigState;

pub const FILE_NAME: &str = "lkg.json";
/// The random key of an edge without a join token.
pub const KEY_FILE_NAME: &str = "lkg.key";
const FORMAT: u32 = 2;
const PLAINTEXT_FORMAT: u32 = 1;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum LkgError {
    #[error("cannot access {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} was sealed under key {found}, this edge has {have} (another join token?)")]
    OtherKey {
        path: PathBuf,
        found: String,
        have: String,
    },
    #[error("the random number generator failed")]
    Rng,
}

/// The key the file is sealed under.
pub struct LkgKey {
    /// Names the key in the file (an HKDF output of its own, not the key).
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for LkgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LkgKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An HKDF output length for `expand`.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl LkgKey {
    /// The key for an edge started with `join_token`, or, without one, the random key kept
    /// in `dir` (created on first use).
    pub fn for_edge(join_token: Option<&str>, dir: &Path) -> Result<Self, LkgError> {
        match join_token {
            Some(token) => Ok(Self::derive(token.as_bytes())),
            None => Self::random_in(dir),
        }
    }

    fn derive(secret: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"tollgate-lkg/2").extract(secret);
        let mut key = [0u8; 32];
        let mut id = [0u8; 8];
        prk.expand(&[b"key"], Len(key.len()))
            .and_then(|okm| okm.fill(&mut key))
            .expect("32 bytes is a valid HKDF-SHA256 length");
        prk.expand(&[b"id"], Len(id.len()))
            .and_then(|okm| okm.fill(&mut id))
            .expect("8 bytes is a valid HKDF-SHA256 length");
        let unbound = UnboundKey::new(&AES_256_GCM, &key).expect("32 bytes is an AES-256 key");
        Self {
            id: hex(&id),
            key: LessSafeKey::new(unbound),
        }
    }

    fn random_in(dir: &Path) -> Result<Self, LkgError> {
        let path = dir.join(KEY_FILE_NAME);
        let io = |source| LkgError::Io {
            path: path.clone(),
            source,
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                let raw = unhex(text.trim())
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| LkgError::Corrupt {
                        path: path.clone(),
                        reason: "not 64 hex characters".into(),
                    })?;
                return Ok(Self::derive(&raw));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        fs::create_dir_all(dir).map_err(io)?;
        let mut raw = [0u8; 32];
        SystemRandom::new().fill(&mut raw).map_err(|_| LkgError::Rng)?;
        let mut f = create_private(&path).map_err(io)?;
        f.write_all(hex(&raw).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        Ok(Self::derive(&raw))
    }
}

#[derive(Serialize, Deserialize)]
struct StoredResource {
    kind: String,
    tenant: String,
    name: String,
    version: u64,
    spec_json: String,
}

impl From<v1::Resource> for StoredResource {
    fn from(r: v1::Resource) -> Self {
        Self {
            kind: r.kind,
            tenant: r.tenant,
            name: r.name,
            version: r.version,
            spec_json: r.spec_json,
        }
    }
}

impl From<StoredResource> for v1::Resource {
    fn from(r: StoredResource) -> Self {
        Self {
            kind: r.kind,
            tenant: r.tenant,
            name: r.name,
            version: r.version,
            spec_json: r.spec_json,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: u32,
    version: u64,
    key_id: String,
    /// Hex.
    nonce: String,
    /// Base64 of the sealed JSON array of resources.
    sealed: String,
}

/// What format 1 wrote: the resources in the clear, with a checksum.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainEnvelope {
    #[serde(rename = "format")]
    _format: u32,
    version: u64,
    checksum: String,
    resources: Vec<StoredResource>,
}

/// Just the format, to pick the envelope.
#[derive(Deserialize)]
struct Format {
    format: u32,
}

fn aad(version: u64, key_id: &str) -> String {
    format!("tollgate-lkg/{FORMAT}/{version}/{key_id}")
}

fn plain_checksum(version: u64, resources: &[v1::Resource]) -> String {
    let content = tollgate_proto::stream::checksum(resources, &[]);
    sha256_hex(format!("tollgate-lkg/{PLAINTEXT_FORMAT}/{version}/{content}").as_bytes())
}

/// The path of the file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Seals `state` under `key` and writes it atomically (blocking).
pub fn save(dir: &Path, key: &LkgKey, state: &ConfigState) -> Result<(), LkgError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LkgError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let resources: Vec<StoredResource> = state.resources.values().cloned().map(Into::into).collect();
    let mut sealed = serde_json::to_vec(&resources).expect("resources always serialize");
    drop(resources);
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| LkgError::Rng)?;
    key.key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(state.version, &key.id).as_bytes()),
            &mut sealed,
        )
        .expect("AES-GCM seals any length a config has");
    let envelope = Envelope {
        format: FORMAT,
        version: state.version,
        key_id: key.id.clone(),
        nonce: hex(&nonce),
        sealed: B64.encode(&sealed),
    };
    drop(sealed);
    let bytes = serde_json::to_vec(&envelope).expect("the envelope always serializes");
    let target = path(dir);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut f = create_private(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &target).map_err(io(&target))?;
    // Make the rename itself durable (directories cannot be opened for sync on Windows).
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// Creates (or truncates) `path` readable and writable by its owner only; a file left over
/// with wider permissions is narrowed before it is written.
fn create_private(path: &Path) -> std::io::Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let f = opts.open(path)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    opts.open(path)
}

/// Reads the file in `dir`: `Ok(None)` when there is none, an error when it cannot be read,
/// was sealed under another key or does not check out (blocking).
pub fn load(dir: &Path, key: &LkgKey) -> Result<Option<ConfigState>, LkgError> {
    let path = path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LkgError::Io { path, source }),
    };
    let corrupt = |reason: String| LkgError::Corrupt {
        path: path.clone(),
        reason,
    };
    let malformed = |e: serde_json::Error| corrupt(format!("malformed: {e}"));
    let format: Format = serde_json::from_slice(&bytes).map_err(malformed)?;
    let (version, resources) = match format.format {
        FORMAT => {
            let envelope: Envelope = serde_json::from_slice(&bytes).map_err(malformed)?;
            drop(bytes);
            if envelope.key_id != key.id {
                return Err(LkgError::OtherKey {
                    path,
                    found: envelope.key_id,
                    have: key.id.clone(),
                });
            }
            let nonce = unhex(&envelope.nonce)
                .and_then(|n| <[u8; NONCE_LEN]>::try_from(n).ok())
                .ok_or_else(|| corrupt("malformed nonce".into()))?;
            let mut sealed = B64
                .decode(envelope.sealed.as_bytes())
                .map_err(|e| corrupt(format!("malformed: {e}")))?;
            let plain = key
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(envelope.version, &envelope.key_id).as_bytes()),
                    &mut sealed,
                )
                .map_err(|_| corrupt("it does not open: edited, torn or truncated".into()))?;
            let stored: Vec<StoredResource> = serde_json::from_slice(plain).map_err(malformed)?;
            (envelope.version, stored.into_iter().map(Into::into).collect())
        }
        PLAINTEXT_FORMAT => {
            let envelope: PlainEnvelope = serde_json::from_slice(&bytes).map_err(malformed)?;
            let resources: Vec<v1::Resource> = envelope.resources.into_iter().map(Into::into).collect();
            if plain_checksum(envelope.version, &resources) != envelope.checksum {
                return Err(corrupt("checksum mismatch".into()));
            }
            (envelope.version, resources)
        }
        other => return Err(corrupt(format!("unknown format {other}"))),
    };
    let state = ConfigState::from_resources(version, resources).map_err(|errors| {
        corrupt(format!(
            "{} undecodable resources, first: {}",
            errors.len(),
            errors[0]
        ))
    })?;
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{resources, DOC};

    fn key() -> LkgKey {
        LkgKey::derive(b"tgt_edge_join_token")
    }

    #[test]
    fn round_trips_sealed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), &key()).unwrap().is_none());
        let state = ConfigState::from_resources(42, resources(DOC)).unwrap();
        save(dir.path(), &key(), &state).unwrap();
        assert_eq!(load(dir.path(), &key()).unwrap(), Some(state.clone()));
        // Nothing of the config is readable in the file.
        let text = fs::read_to_string(path(dir.path())).unwrap();
        assert!(DOC.contains("mobile"));
        assert!(!text.contains("mobile"), "{text}");
        // Overwriting leaves no temporary file behind; a second seal takes a fresh nonce.
        save(dir.path(), &key(), &state).unwrap();
        assert_ne!(fs::read_to_string(path(dir.path())).unwrap(), text);
        // Owner-only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn another_key_is_told_apart_from_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let state = ConfigState::from_resources(42, resources(DOC)).unwrap();
        save(dir.path(), &key(), &state).unwrap();
        let other = LkgKey::derive(b"tgt_rotated_token");
        let err = load(dir.path(), &other).unwrap_err();
        assert!(matches!(err, LkgError::OtherKey { .. }), "{err}");
        // A forged key id does not help: the key itself does not open it.
        let text = fs::read_to_string(path(dir.path())).unwrap();
        fs::write(path(dir.path()), text.replace(&key().id, &other.id)).unwrap();
        let err = load(dir.path(), &other).unwrap_err();
        assert!(matches!(err, LkgError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = ConfigState::from_resources(42, resources(DOC)).unwrap();
        save(dir.path(), &key(), &state).unwrap();
        let good = fs::read_to_string(path(dir.path())).unwrap();
        let refused = |text: &str| {
            fs::write(path(dir.path()), text).unwrap();
            load(dir.path(), &key()).unwrap_err()
        };

        // One changed byte of the sealed resources.
        let at = good.find("\"sealed\":\"").unwrap() + 20;
        let mut edited = good.clone().into_bytes();
        edited[at] = if edited[at] == b'A' { b'B' } else { b'A' };
        let err = refused(std::str::from_utf8(&edited).unwrap());
        assert!(err.to_string().contains("does not open"), "{err}");

        // An edited version.
        let bumped = good.replacen("\"version\":42", "\"version\":43", 1);
        assert_ne!(bumped, good);
        assert!(matches!(refused(&bumped), LkgError::Corrupt { .. }));

        // A torn write.
        let err = refused(&good[..good.len() / 2]);
        assert!(err.to_string().contains("malformed"), "{err}");
    }

    #[test]
    fn a_plaintext_file_of_format_1_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let resources = resources(DOC);
        let plain = serde_json::json!({
            "format": 1,
            "version": 7,
            "checksum": plain_checksum(7, &resources),
            "resources": resources.iter().cloned().map(StoredResource::from).collect::<Vec<_>>(),
        });
        fs::write(path(dir.path()), plain.to_string()).unwrap();
        let state = load(dir.path(), &key()).unwrap().unwrap();
        assert_eq!(state, ConfigState::from_resources(7, resources).unwrap());
        // Edited, it is refused like any other.
        let edited = plain.to_string().replacen("mobile", "mobilx", 1);
        fs::write(path(dir.path()), edited).unwrap();
        assert!(matches!(load(dir.path(), &key()), Err(LkgError::Corrupt { .. })));
    }

    #[test]
    fn without_a_join_token_the_key_is_random_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = LkgKey::for_edge(None, dir.path()).unwrap();
        let again = LkgKey::for_edge(None, dir.path()).unwrap();
        assert_eq!(first.id, again.id);
        assert_ne!(
            first.id,
            LkgKey::for_edge(None, tempfile::tempdir().unwrap().path())
                .unwrap()
                .id
        );
        assert_ne!(first.id, LkgKey::for_edge(Some("t"), dir.path()).unwrap().id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(dir.path().join(KEY_FILE_NAME)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        fs::write(dir.path().join(KEY_FILE_NAME), "short").unwrap();
        assert!(LkgKey::for_edge(None, dir.path()).is_err());
    }
}
