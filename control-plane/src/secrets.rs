//! Secrets at rest: AES-256-GCM under a master key kept in a file outside the Raft store
//! (`<data-dir>/master.key` unless `--master-key-file` says otherwise). Secrets are sealed on
//! the node that receives them, before they enter the Raft log, so neither the log, the
//! snapshots nor the sled files ever hold a plaintext. Every control-plane node of a cluster
//! needs the same key file; records carry the key's id so a mismatch is reported, not
//! mistaken for corruption.

use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tollgate_proto::keys::{hex, sha256_hex, unhex};
use tollgate_proto::model::SecretRecord;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("master key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("master key file {0} is not 64 hex characters")]
    Malformed(String),
    #[error("secret {0} was sealed with master key {1}, this node has {2}")]
    WrongKey(String, String, String),
    #[error("secret {0} is corrupt or was tampered with")]
    Corrupt(String),
    #[error("random number generator failed")]
    Rng,
}

/// Fills `buf` from the system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), SecretError> {
    SystemRandom::new().fill(buf).map_err(|_| SecretError::Rng)
}

/// A random token with `prefix`: 32 random bytes in hex.
pub fn random_token(prefix: &str) -> Result<String, SecretError> {
    let mut b = [0u8; 32];
    random_bytes(&mut b)?;
    Ok(format!("{prefix}{}", hex(&b)))
}

/// Writes `contents` to `path` readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

pub struct MasterKey {
    id: String,
    key: LessSafeKey,
    hmac: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Loads the key at `path`, creating a random one (mode 0600) if there is none. Several
    /// nodes may start at once on one shared file: the first to link its file in wins and the
    /// others read it.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse(path, &text),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            Err(_) => {}
        }
        let mut raw = [0u8; 32];
        random_bytes(&mut raw)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        write_private(&tmp, format!("{}\n", hex(&raw)).as_bytes()).map_err(io)?;
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Self::from_bytes(&raw),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(io)?;
                Self::parse(path, &text)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Loads the key at `path`, which must exist.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        match unhex(text) {
            Some(raw) if raw.len() == 32 => Self::from_bytes(&raw),
            _ => Err(SecretError::Malformed(path.display().to_string())),
        }
    }

    fn from_bytes(raw: &[u8]) -> Result<Self, SecretError> {
        let key = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| SecretError::Rng)?;
        Ok(Self {
            id: sha256_hex(raw)[..12].to_string(),
            key: LessSafeKey::new(key),
            hmac: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, raw),
        })
    }

    /// A credential derived from the key for `purpose` (HMAC-SHA256, hex): nodes sharing the
    /// key agree on it without it ever being sent or stored.
    pub fn derive(&self, purpose: &str) -> String {
        hex(aws_lc_rs::hmac::sign(&self.hmac, purpose.as_bytes()).as_ref())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` for `tenant/name` (both bound into the ciphertext as associated data).
    pub fn seal(
        &self,
        tenant: &str,
        name: &str,
        value: &[u8],
        now_ms: u64,
    ) -> Result<SecretRecord, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let mut buf = value.to_vec();
        let aad = format!("{tenant}/{name}");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretError::Rng)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buf);
        Ok(SecretRecord {
            name: name.into(),
            tenant: tenant.into(),
            sealed: hex(&sealed),
            key_id: self.id.clone(),
            updated_ms: now_ms,
        })
    }

    /// Opens a sealed record.
    pub fn open(&self, record: &SecretRecord) -> Result<Vec<u8>, SecretError> {
        let what = format!("{}/{}", record.tenant, record.name);
        if record.key_id != self.id {
            return Err(SecretError::WrongKey(
                what,
                record.key_id.clone(),
                self.id.clone(),
            ));
        }
        let bytes = (0..record.sealed.len() / 2)
            .map(|i| u8::from_str_radix(record.sealed.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| SecretError::Corrupt(what.clone()))?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Corrupt(what));
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Corrupt(what.clone()))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(what.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Corrupt(what.clone()))?;
        Ok(plain.to_vec())
    }
}

/// The master keys a node holds: its own (`--master-key-file`) and, while the cluster's key
/// is being rotated, the next one (`--next-master-key-file`). The replicated state names the
/// cluster's active key by id ([`crate::state::ConfigState::master_key_id`]); secrets are
/// opened with the key that sealed them, whichever it is.
#[derive(Debug)]
pub struct Keyring {
    current: MasterKey,
    next: Option<MasterKey>,
}

impl Keyring {
    pub fn new(current: MasterKey, next: Option<MasterKey>) -> Self {
        let next = next.filter(|n| n.id != current.id);
        Self { current, next }
    }

    /// This node's own key (from `--master-key-file`).
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// The key to rotate to, when the node was given one.
    pub fn next(&self) -> Option<&MasterKey> {
        self.next.as_ref()
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(&self.next)
            .find(|k| k.id == id)
    }

    pub fn all(&self) -> impl Iterator<Item = &MasterKey> {
        std::iter::once(&self.current).chain(&self.next)
    }

    /// The cluster's active key (`active_id`, from the state) when this node holds it, else its
    /// own (before `cluster init`, or on a node that lacks the key, which then cannot open
    /// secrets and says so).
    pub fn active(&self, active_id: Option<&str>) -> &MasterKey {
        active_id.and_then(|id| self.get(id)).unwrap_or(&self.current)
    }

    /// Opens a record with the key that sealed it.
    pub fn open(&self, record: &SecretRecord) -> Result<Vec<u8>, SecretError> {
        match self.get(&record.key_id) {
            Some(k) => k.open(record),
            None => self.current.open(record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::load_or_create(&path).unwrap();
        let again = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(key.id(), again.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let rec = key.seal("acme", "openai-key", b"sk-very-secret", 1).unwrap();
        assert!(!rec.sealed.contains(&hex(b"sk-very-secret")));
        assert_eq!(again.open(&rec).unwrap(), b"sk-very-secret");
        // Moving a sealed value to another name fails: the name is bound in.
        let mut moved = rec.clone();
        moved.name = "other".into();
        assert!(matches!(key.open(&moved), Err(SecretError::Corrupt(_))));
        let other = MasterKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(matches!(other.open(&rec), Err(SecretError::WrongKey(..))));
        assert_eq!(key.derive("raft"), again.derive("raft"));
        assert_ne!(key.derive("raft"), other.derive("raft"));
        assert_ne!(key.derive("raft"), key.derive("other"));
    }

    #[test]
    fn a_keyring_opens_with_the_sealing_key_and_names_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = MasterKey::load_or_create(&dir.path().join("old.key")).unwrap();
        let new = MasterKey::load_or_create(&dir.path().join("new.key")).unwrap();
        let (old_id, new_id) = (old.id().to_string(), new.id().to_string());
        let by_old = old.seal("t", "s", b"v1", 1).unwrap();
        let by_new = new.seal("t", "s", b"v2", 1).unwrap();
        let ring = Keyring::new(old, Some(new));
        assert_eq!(ring.open(&by_old).unwrap(), b"v1");
        assert_eq!(ring.open(&by_new).unwrap(), b"v2");
        assert_eq!(ring.active(None).id(), old_id);
        assert_eq!(ring.active(Some(&new_id)).id(), new_id);
        assert_eq!(ring.active(Some("unknown")).id(), old_id);
        assert_eq!(ring.all().count(), 2);
        let alone = Keyring::new(
            MasterKey::load_or_create(&dir.path().join("new.key")).unwrap(),
            None,
        );
        assert!(matches!(alone.open(&by_old), Err(SecretError::WrongKey(..))));
    }
}
