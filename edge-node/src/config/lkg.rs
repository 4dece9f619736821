//! The last-known-good config: `<data_dir>/lkg.json`, written after every applied config and
//! read at startup so the edge serves without a reachable control plane, also after a
//! restart.
//!
//! The file is a JSON envelope `{format, version, checksum, resources}`; `checksum` is a
//! SHA-256 over the version and every resource field, so a torn or edited file is refused
//! whole, never half-loaded. Writes go to a temporary file that is fsynced and renamed over
//! the old one (then the directory is fsynced), so a crash leaves the old or the new file.
//!
//! The file holds the private keys of the config's TLS certificates, so it is readable by
//! its owner only (mode 0600, set on the temporary file before anything is written to it).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tollgate_proto::keys::sha256_hex;
use tollgate_proto::v1;

use crate::config::resources::ConfigState;

pub const FILE_NAME: &str = "lkg.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LkgError {
    #[error("cannot access {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct StoredResource {
    kind: String,
    tenant: String,
    name: String,
    version: u64,
    spec_json: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: u32,
    version: u64,
    checksum: String,
    resources: Vec<StoredResource>,
}

fn wire(r: &StoredResource) -> v1::Resource {
    v1::Resource {
        kind: r.kind.clone(),
        tenant: r.tenant.clone(),
        name: r.name.clone(),
        version: r.version,
        spec_json: r.spec_json.clone(),
    }
}

fn envelope_checksum(version: u64, resources: &[v1::Resource]) -> String {
    let content = tollgate_proto::stream::checksum(resources, &[]);
    sha256_hex(format!("tollgate-lkg/{FORMAT}/{version}/{content}").as_bytes())
}

/// The path of the file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `state` atomically (blocking).
pub fn save(dir: &Path, state: &ConfigState) -> Result<(), LkgError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LkgError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let resources: Vec<v1::Resource> = state.resources.values().cloned().collect();
    let envelope = Envelope {
        format: FORMAT,
        version: state.version,
        checksum: envelope_checksum(state.version, &resources),
        resources: resources
            .into_iter()
            .map(|r| StoredResource {
                kind: r.kind,
                tenant: r.tenant,
                name: r.name,
                version: r.version,
                spec_json: r.spec_json,
            })
            .collect(),
    };
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

/// Reads the file in `dir`: `Ok(None)` when there is none, an error when it cannot be read or
/// does not check out (blocking).
pub fn load(dir: &Path) -> Result<Option<ConfigState>, LkgError> {
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
    let envelope: Envelope =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("malformed: {e}")))?;
    if envelope.format != FORMAT {
        return Err(corrupt(format!("unknown format {}", envelope.format)));
    }
    let resources: Vec<v1::Resource> = envelope.resources.iter().map(wire).collect();
    if envelope_checksum(envelope.version, &resources) != envelope.checksum {
        return Err(corrupt("checksum mismatch".into()));
    }
    let state = ConfigState::from_resources(envelope.version, resources).map_err(|errors| {
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

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let state = ConfigState::from_resources(42, resources(DOC)).unwrap();
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(state.clone()));
        // Overwriting leaves no temporary file behind.
        save(dir.path(), &state).unwrap();
        // Owner-only: the file holds certificates' private keys.
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
    fn a_corrupt_file_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = ConfigState::from_resources(42, resources(DOC)).unwrap();
        save(dir.path(), &state).unwrap();
        let good = fs::read_to_string(path(dir.path())).unwrap();

        // An edited resource.
        let edited = good.replacen("mobile", "mobilx", 1);
        assert_ne!(edited, good);
        fs::write(path(dir.path()), &edited).unwrap();
        assert!(matches!(load(dir.path()), Err(LkgError::Corrupt { .. })));

        // An edited version.
        let bumped = good.replacen("\"version\":42", "\"version\":43", 1);
        assert_ne!(bumped, good);
        fs::write(path(dir.path()), &bumped).unwrap();
        assert!(matches!(load(dir.path()), Err(LkgError::Corrupt { .. })));

        // A torn write.
        fs::write(path(dir.path()), &good[..good.len() / 2]).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
    }
}
