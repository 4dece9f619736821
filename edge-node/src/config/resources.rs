//! The edge's applied config as raw resources, exactly as the control plane sent them: the
//! input of [`crate::config::snapshot::Snapshot::compile`], what the last-known-good file stores, and
//! what deltas apply to.
//!
//! ```text
//!   ConfigPush (snapshot chunks | delta) --sync--> ConfigState --compile--> Snapshot
//!                                                      |
//!                                                      +--> lkg.json
//! ```

use std::collections::BTreeMap;

use tollgate_proto::model::{Kind, ResourceKey, Spec};
use tollgate_proto::v1;

/// A full resource set at a config version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigState {
    /// The control plane's config version (Raft applied index) this set is at.
    pub version: u64,
    pub resources: BTreeMap<ResourceKey, v1::Resource>,
}

/// A problem with one resource, sent back to the control plane in a NACK.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {tenant}/{name}: {message}")]
pub struct ResourceError {
    pub kind: String,
    pub tenant: String,
    pub name: String,
    pub message: String,
}

impl ResourceError {
    pub fn new(key: &ResourceKey, message: impl Into<String>) -> Self {
        Self {
            kind: key.kind.as_str().to_string(),
            tenant: key.tenant.clone(),
            name: key.name.clone(),
            message: message.into(),
        }
    }

    /// An error about the push as a whole rather than one resource.
    pub fn push(message: impl Into<String>) -> Self {
        Self {
            kind: String::new(),
            tenant: String::new(),
            name: String::new(),
            message: message.into(),
        }
    }
}

impl From<ResourceError> for v1::ResourceError {
    fn from(e: ResourceError) -> Self {
        v1::ResourceError {
            kind: e.kind,
            tenant: e.tenant,
            name: e.name,
            message: e.message,
        }
    }
}

/// The kind named exactly as the wire spells it (`jwt_issuer`, not `jwt-issuers`).
fn parse_kind(s: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.as_str() == s)
}

fn wire_key(kind: &str, tenant: &str, name: &str) -> Result<ResourceKey, ResourceError> {
    match parse_kind(kind) {
        Some(k) => Ok(ResourceKey::new(k, tenant, name)),
        None => Err(ResourceError {
            kind: kind.to_string(),
            tenant: tenant.to_string(),
            name: name.to_string(),
            message: format!("unknown resource kind {kind:?}"),
        }),
    }
}

impl ConfigState {
    /// A whole new set (a snapshot). Later duplicates of a key replace earlier ones.
    pub fn from_resources(
        version: u64,
        resources: impl IntoIterator<Item = v1::Resource>,
    ) -> Result<Self, Vec<ResourceError>> {
        let mut state = ConfigState {
            version,
            resources: BTreeMap::new(),
        };
        state.upsert_all(resources)?;
        Ok(state)
    }

    /// This set with a delta applied on top, at `version`. `self` is left unchanged.
    pub fn with_delta(
        &self,
        version: u64,
        upserts: impl IntoIterator<Item = v1::Resource>,
        removals: &[v1::ResourceKey],
    ) -> Result<Self, Vec<ResourceError>> {
        let mut next = self.clone();
        next.version = version;
        let mut errors = Vec::new();
        for k in removals {
            match wire_key(&k.kind, &k.tenant, &k.name) {
                // Removing what the edge does not hold is harmless: the result is the same.
                Ok(key) => {
                    next.resources.remove(&key);
                }
                Err(e) => errors.push(e),
            }
        }
        if let Err(mut e) = next.upsert_all(upserts) {
            errors.append(&mut e);
        }
        if errors.is_empty() {
            Ok(next)
        } else {
            Err(errors)
        }
    }

    fn upsert_all(
        &mut self,
        upserts: impl IntoIterator<Item = v1::Resource>,
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        for r in upserts {
            match wire_key(&r.kind, &r.tenant, &r.name) {
                Ok(key) => {
                    self.resources.insert(key, r);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every resource decoded into its spec, in key order. All problems are reported, not
    /// just the first.
    pub fn decode(&self) -> Result<Vec<Spec>, Vec<ResourceError>> {
        let mut specs = Vec::with_capacity(self.resources.len());
        let mut errors = Vec::new();
        for (key, r) in &self.resources {
            match Spec::from_json(key.kind, &r.spec_json) {
                Ok(spec) if spec.key() == *key => specs.push(spec),
                Ok(spec) => errors.push(ResourceError::new(
                    key,
                    format!("spec names a different resource ({})", spec.key()),
                )),
                Err(e) => errors.push(ResourceError::new(key, format!("cannot decode spec: {e}"))),
            }
        }
        if errors.is_empty() {
            Ok(specs)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: &str, tenant: &str, name: &str, json: &str) -> v1::Resource {
        v1::Resource {
            kind: kind.into(),
            tenant: tenant.into(),
            name: name.into(),
            version: 1,
            spec_json: json.into(),
        }
    }

    #[test]
    fn deltas_upsert_and_remove_without_touching_the_base() {
        let base = ConfigState::from_resources(
            1,
            [
                res("tenant", "", "acme", r#"{"name":"acme"}"#),
                res("app", "acme", "m", r#"{"name":"m","tenant":"acme"}"#),
            ],
        )
        .unwrap();
        let next = base
            .with_delta(
                2,
                [res("app", "acme", "n", r#"{"name":"n","tenant":"acme"}"#)],
                &[v1::ResourceKey {
                    kind: "app".into(),
                    tenant: "acme".into(),
                    name: "m".into(),
                }],
            )
            .unwrap();
        assert_eq!(base.resources.len(), 2);
        assert_eq!(next.version, 2);
        let names: Vec<_> = next.resources.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["acme", "n"]);
        assert_eq!(next.decode().unwrap().len(), 2);
    }

    #[test]
    fn decode_reports_every_bad_resource() {
        let state = ConfigState::from_resources(
            1,
            [
                res("app", "acme", "m", r#"{"name":"other","tenant":"acme"}"#),
                res("tenant", "", "t", "{not json"),
            ],
        )
        .unwrap();
        let errs = state.decode().unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(
            errs.iter()
                .any(|e| e.name == "m" && e.message.contains("different resource")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.name == "t" && e.message.contains("cannot decode")),
            "{errs:?}"
        );
        let unknown = ConfigState::from_resources(1, [res("gizmo", "acme", "g", "{}")]);
        assert_eq!(unknown.unwrap_err()[0].kind, "gizmo");
    }
}
