//! Fuzzing the config-stream decoder (issue 14): sequences of pushes, genuine, stale,
//! tampered, corrupt, chunked out of order, or decoded from random bytes, against a model of
//! what the edge must hold after each. Only a push that is in step, whose checksum matches
//! and whose resources compile changes the config; nothing panics.
//! `PROPTEST_CASES` sets the number of cases (`scripts/fuzz` runs many more than CI).

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message as _;
use tollgate_proto::model::ResourceKey;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    /// A delta adding `add` apps and removing the added ones picked by `remove`.
    Delta {
        add: u8,
        remove: Vec<prop::sample::Index>,
        fault: Fault,
    },
    /// The whole config again, at a later version, in `chunks` chunks.
    Snapshot {
        chunks: u8,
        fault: Fault,
        reorder: Option<prop::sample::Index>,
    },
    /// Whatever random bytes decode to.
    Bytes(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// Built on a version the edge does not hold (deltas only).
    Stale,
    /// Content changed after the checksum was taken.
    Tampered,
    /// A resource whose spec is not valid JSON, checksummed as sent.
    Corrupt,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![5 => Just(Fault::None), 1 => Just(Fault::Stale), 1 => Just(Fault::Tampered), 1 => Just(Fault::Corrupt)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, prop::collection::vec(any::<prop::sample::Index>(), 0..3), fault())
            .prop_map(|(add, remove, fault)| Op::Delta { add, remove, fault }),
        2 => (1u8..5, fault(), prop::option::weighted(0.2, any::<prop::sample::Index>()))
            .prop_map(|(chunks, fault, reorder)| Op::Snapshot { chunks, fault, reorder }),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Op::Bytes),
    ]
}

/// What the edge must hold.
struct Model {
    version: u64,
    resources: BTreeMap<ResourceKey, v1::Resource>,
    /// Apps the fuzz added (only these are removed: DOC's apps are referenced by its keys).
    added: Vec<String>,
    next_app: u32,
}

fn app(name: &str, version: u64) -> v1::Resource {
    let mut r = resources(&format!("apps: [{{name: {name}, tenant: acme}}]")).remove(0);
    r.version = version;
    r
}

fn key(kind: &str, tenant: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind: tollgate_proto::Kind::parse(kind).unwrap(),
        tenant: tenant.to_string(),
        name: name.to_string(),
    }
}

fn corrupt(r: &mut v1::Resource) {
    r.spec_json = "{\"name\": ".into();
}

/// One push, then what the stream does on a Resync: the session ends, and a half-received
/// snapshot with it.
fn push_one(a: &mut Applier, push: v1::ConfigPush, clients: &mut Retained) -> Outcome {
    let outcome = a.on_push(push, clients);
    if matches!(outcome, Outcome::Resync { .. }) {
        a.reset_pending();
    }
    outcome
}

/// Runs one op, checks the outcome the model expects, and that the edge holds what the
/// model holds afterwards.
fn step(a: &mut Applier, m: &mut Model, op: Op, clients: &mut Retained) -> Result<(), TestCaseError> {
    match op {
        Op::Delta { add, remove, fault } => {
            let version = m.version + 1 + u64::from(add);
            let names: Vec<String> = (0..add)
                .map(|_| {
                    m.next_app += 1;
                    format!("app{}", m.next_app)
                })
                .collect();
            let mut upserts: Vec<v1::Resource> = names.iter().map(|n| app(n, version)).collect();
            let removals: Vec<v1::ResourceKey> = if m.added.is_empty() {
                Vec::new()
            } else {
                remove
                    .iter()
                    .map(|i| v1::ResourceKey {
                        kind: "app".into(),
                        tenant: "acme".into(),
                        name: m.added[i.index(m.added.len())].clone(),
                    })
                    .collect()
            };
            if fault == Fault::Corrupt {
                upserts.push(app("broken", version));
                corrupt(upserts.last_mut().unwrap());
            }
            let base = if fault == Fault::Stale {
                m.version + 1
            } else {
                m.version
            };
            let mut push = delta("d", base, version, upserts, removals.clone());
            if fault == Fault::Tampered {
                push.removals.push(v1::ResourceKey {
                    kind: "app".into(),
                    tenant: "acme".into(),
                    name: "mobile".into(),
                });
            }
            let outcome = push_one(a, push.clone(), clients);
            match (fault, outcome) {
                (Fault::None, Outcome::Applied { ack, .. }) => {
                    prop_assert_eq!(ack.version, version);
                    m.version = version;
                    for k in &removals {
                        m.resources.remove(&key(&k.kind, &k.tenant, &k.name));
                        m.added.retain(|n| *n != k.name);
                    }
                    for r in push.upserts {
                        m.resources.insert(key(&r.kind, &r.tenant, &r.name), r);
                    }
                    m.added.extend(names);
                }
                (Fault::Stale, Outcome::Resync { from_version: 0, .. }) => {}
                (Fault::Tampered, Outcome::Resync { from_version, .. }) => {
                    prop_assert_eq!(from_version, m.version)
                }
                (Fault::Corrupt, Outcome::Rejected { nack }) => prop_assert_eq!(nack.version, version),
                (fault, outcome) => {
                    prop_assert!(false, "delta with fault {:?}: unexpected {:?}", fault, outcome)
                }
            }
        }
        Op::Snapshot {
            chunks,
            fault,
            reorder,
        } => {
            let version = m.version + 1;
            let mut all: Vec<v1::Resource> = m.resources.values().cloned().collect();
            if fault == Fault::Corrupt {
                all.push(app("broken", version));
                corrupt(all.last_mut().unwrap());
            }
            let mut pushes = snapshot_chunks("s", version, all.clone(), usize::from(chunks));
            if fault == Fault::Tampered {
                pushes[0].upserts.pop();
            }
            let swapped = match reorder {
                Some(i) if pushes.len() > 1 => {
                    let i = i.index(pushes.len() - 1);
                    pushes.swap(i, i + 1);
                    true
                }
                _ => false,
            };
            // As the stream does: a Resync ends the session, the rest of it is never read.
            let mut outcomes: Vec<Outcome> = Vec::new();
            for p in pushes {
                let o = push_one(a, p, clients);
                let resync = matches!(o, Outcome::Resync { .. });
                outcomes.push(o);
                if resync {
                    break;
                }
            }
            let last = outcomes.pop().unwrap();
            if swapped {
                prop_assert!(
                    outcomes
                        .iter()
                        .chain([&last])
                        .any(|o| matches!(o, Outcome::Resync { from_version: 0, .. })),
                    "chunks out of order were not refused"
                );
                // Whatever came after the refusal, the config is unchanged.
            } else {
                prop_assert!(
                    outcomes.iter().all(|o| matches!(o, Outcome::Pending)),
                    "{:?}",
                    outcomes
                );
                match (fault, last) {
                    (Fault::None | Fault::Stale, Outcome::Applied { ack, state, .. }) => {
                        prop_assert_eq!(ack.version, version);
                        prop_assert_eq!(&state.resources, &m.resources);
                        m.version = version;
                    }
                    (Fault::Tampered, Outcome::Resync { .. }) => {}
                    (Fault::Corrupt, Outcome::Rejected { .. }) => {}
                    (fault, outcome) => {
                        prop_assert!(false, "snapshot with fault {:?}: unexpected {:?}", fault, outcome)
                    }
                }
            }
        }
        Op::Bytes(bytes) => {
            if let Ok(push) = v1::ConfigPush::decode(&bytes[..]) {
                let outcome = push_one(a, push, clients);
                prop_assert!(
                    !matches!(outcome, Outcome::Applied { .. }),
                    "random bytes applied: {:?}",
                    outcome
                );
            }
            // A half snapshot from the noise is dropped by the next delta or chunk 0.
            a.reset_pending();
        }
    }
    prop_assert_eq!(a.version(), m.version);
    prop_assert_eq!(&a.current().resources, &m.resources);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_config_pushes_change_the_config_only_when_in_step_and_intact(ops in prop::collection::vec(op(), 1..12)) {
        let mut clients = Retained::default();
        let mut a = loaded(&mut clients);
        let mut m = Model {
            version: a.version(),
            resources: a.current().resources.clone(),
            added: Vec::new(),
            next_app: 0,
        };
        for op in ops {
            step(&mut a, &mut m, op, &mut clients)?;
        }
    }
}
