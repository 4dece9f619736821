use tollgate_proto::stream::checksum;

use super::*;
use crate::testutil::{resources, DOC};

fn snapshot_chunks(nonce: &str, version: u64, all: Vec<v1::Resource>, n: usize) -> Vec<v1::ConfigPush> {
    let sum = checksum(&all, &[]);
    let per = all.len().div_ceil(n);
    let parts: Vec<Vec<v1::Resource>> = all.chunks(per).map(|c| c.to_vec()).collect();
    let chunks = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, upserts)| v1::ConfigPush {
            nonce: nonce.into(),
            version,
            snapshot: true,
            chunk: i as u32,
            chunks,
            upserts,
            removals: vec![],
            checksum: if i as u32 + 1 == chunks {
                sum.clone()
            } else {
                String::new()
            },
            base_version: 0,
            peers: None,
            usage: None,
            tail: None,
        })
        .collect()
}

fn delta(
    nonce: &str,
    base: u64,
    version: u64,
    upserts: Vec<v1::Resource>,
    removals: Vec<v1::ResourceKey>,
) -> v1::ConfigPush {
    v1::ConfigPush {
        nonce: nonce.into(),
        version,
        snapshot: false,
        chunk: 0,
        chunks: 0,
        checksum: checksum(&upserts, &removals),
        upserts,
        removals,
        base_version: base,
        peers: None,
        usage: None,
        tail: None,
    }
}

fn applied(o: Outcome) -> (v1::Ack, Arc<ConfigState>) {
    match o {
        Outcome::Applied { ack, state, .. } => (ack, state),
        other => panic!("expected Applied, got {other:?}"),
    }
}

/// An applier holding DOC at version 5.
fn loaded(clients: &mut Retained) -> Applier {
    let mut a = Applier::default();
    let mut outcomes: Vec<_> = snapshot_chunks("n1", 5, resources(DOC), 3)
        .into_iter()
        .map(|p| a.on_push(p, clients))
        .collect();
    let last = outcomes.pop().unwrap();
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Pending)),
        "{outcomes:?}"
    );
    let (ack, _) = applied(last);
    assert_eq!((ack.nonce.as_str(), ack.version), ("n1", 5));
    a
}

#[test]
fn a_chunked_snapshot_applies_after_its_last_chunk() {
    let mut clients = Retained::default();
    let a = loaded(&mut clients);
    assert_eq!(a.version(), 5);
    assert_eq!(a.current().resources.len(), resources(DOC).len());
}

#[test]
fn deltas_apply_on_top_of_the_current_config() {
    let mut clients = Retained::default();
    let mut a = loaded(&mut clients);
    let add = resources("apps: [{name: new, tenant: acme}]");
    let gone = v1::ResourceKey {
        kind: "app".into(),
        tenant: "acme".into(),
        name: "web".into(),
    };
    let (ack, state) = applied(a.on_push(delta("d1", 5, 6, add, vec![gone]), &mut clients));
    assert_eq!((ack.nonce.as_str(), ack.version), ("d1", 6));
    let apps: Vec<_> = state
        .resources
        .keys()
        .filter(|k| k.kind == tollgate_proto::Kind::App)
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(apps, ["mobile", "new"]);
    assert_eq!(a.version(), 6);
}

#[test]
fn a_checksum_mismatch_is_nacked_and_the_old_config_kept() {
    let mut clients = Retained::default();
    let mut a = loaded(&mut clients);
    let before = a.current().clone();
    let mut push = delta("d1", 5, 6, resources("apps: [{name: new, tenant: acme}]"), vec![]);
    push.upserts[0].spec_json = r#"{"name":"new","tenant":"acme","description":"tampered"}"#.into();
    match a.on_push(push, &mut clients) {
        Outcome::Resync { nack, from_version } => {
            assert_eq!((nack.nonce.as_str(), nack.version), ("d1", 6));
            assert!(nack.errors[0].message.contains("checksum mismatch"), "{nack:?}");
            assert_eq!(from_version, 5);
        }
        other => panic!("expected Resync, got {other:?}"),
    }
    assert_eq!(a.current(), &before);

    // Same for a snapshot whose chunks do not add up to the checksum.
    let mut chunks = snapshot_chunks("s2", 7, resources(DOC), 2);
    chunks[0].upserts.pop();
    let outcomes: Vec<_> = chunks.into_iter().map(|p| a.on_push(p, &mut clients)).collect();
    assert!(
        matches!(outcomes.last(), Some(Outcome::Resync { .. })),
        "{outcomes:?}"
    );
    assert_eq!(a.version(), 5);
}

#[test]
fn an_invalid_config_is_nacked_per_resource_and_the_old_config_kept() {
    let mut clients = Retained::default();
    let mut a = loaded(&mut clients);
    let bad =
        resources("services: [{name: broken, tenant: acme, upstream: missing, routes: [{paths: ['/b']}]}]");
    match a.on_push(delta("d1", 5, 6, bad, vec![]), &mut clients) {
        Outcome::Rejected { nack } => {
            assert_eq!(nack.version, 6);
            let e = &nack.errors[0];
            assert_eq!(
                (e.kind.as_str(), e.tenant.as_str(), e.name.as_str()),
                ("service", "acme", "broken")
            );
            assert!(e.message.contains("upstream"), "{e:?}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(a.version(), 5);

    let mut undecodable = resources("apps: [{name: x, tenant: acme}]");
    undecodable[0].spec_json = "{\"name\": 1}".into();
    assert!(matches!(
        a.on_push(delta("d2", 5, 6, undecodable, vec![]), &mut clients),
        Outcome::Rejected { .. }
    ));
    assert_eq!(a.version(), 5);
}

#[test]
fn a_delta_from_another_base_forces_a_snapshot() {
    let mut clients = Retained::default();
    let mut a = loaded(&mut clients);
    match a.on_push(delta("d1", 4, 6, vec![], vec![]), &mut clients) {
        Outcome::Resync { nack, from_version } => {
            assert_eq!(from_version, 0);
            assert!(nack.errors[0].message.contains("version 4"), "{nack:?}");
        }
        other => panic!("expected Resync, got {other:?}"),
    }
    assert_eq!(a.version(), 5);
}

#[test]
fn chunks_out_of_order_are_refused() {
    let mut clients = Retained::default();
    let mut a = loaded(&mut clients);
    let chunks = snapshot_chunks("s2", 7, resources(DOC), 3);
    assert!(matches!(
        a.on_push(chunks[0].clone(), &mut clients),
        Outcome::Pending
    ));
    assert!(matches!(
        a.on_push(chunks[2].clone(), &mut clients),
        Outcome::Resync { from_version: 0, .. }
    ));
    // A chunk of another nonce does not mix in either.
    let other = snapshot_chunks("s3", 8, resources(DOC), 3);
    assert!(matches!(
        a.on_push(other[1].clone(), &mut clients),
        Outcome::Resync { .. }
    ));
    assert_eq!(a.version(), 5);
}

mod fuzz;
