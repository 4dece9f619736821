//! Helpers for the config stream that both ends must compute the same way.

use aws_lc_rs::digest;

use crate::v1::{Resource, ResourceKey};

/// SHA-256 over a push's upserts and removals, in order, each field length-prefixed so that
/// no two different pushes hash alike. Edges recompute it before applying anything.
pub fn checksum<'a>(
    upserts: impl IntoIterator<Item = &'a Resource>,
    removals: impl IntoIterator<Item = &'a ResourceKey>,
) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut field = |s: &[u8]| {
        ctx.update(&(s.len() as u64).to_be_bytes());
        ctx.update(s);
    };
    for r in upserts {
        field(b"U");
        field(r.kind.as_bytes());
        field(r.tenant.as_bytes());
        field(r.name.as_bytes());
        field(&r.version.to_be_bytes());
        field(r.spec_json.as_bytes());
    }
    for k in removals {
        field(b"R");
        field(k.kind.as_bytes());
        field(k.tenant.as_bytes());
        field(k.name.as_bytes());
    }
    crate::keys::hex(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_depends_on_every_field() {
        let r = Resource {
            kind: "app".into(),
            tenant: "t".into(),
            name: "a".into(),
            version: 3,
            spec_json: "{}".into(),
        };
        let base = checksum([&r], []);
        let mut r2 = r.clone();
        r2.version = 4;
        assert_ne!(base, checksum([&r2], []));
        let mut r3 = r.clone();
        r3.name = "ab".into();
        r3.tenant = "".into();
        assert_ne!(base, checksum([&r3], []));
        assert_eq!(base, checksum([&r], []));
    }
}
