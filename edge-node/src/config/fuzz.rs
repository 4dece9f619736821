//! Fuzzing the declarative-file validator (issue 14) differentially against the edge's
//! compiler: documents mutated from a valid seed, as JSON trees (which reach the validator)
//! and as raw text (which mostly reach the YAML parser). Nothing panics, and whatever the
//! control plane's checks accept, the edge compiles: otherwise an accepted apply would be
//! NACKed by every edge. `PROPTEST_CASES` sets the number of cases (`scripts/fuzz` runs many
//! more than CI).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;
use tollgate_proto::model::Document;
use tollgate_proto::validate::{check_duplicates, check_references, validate_spec};

use crate::config::resources::ConfigState;
use crate::config::snapshot::{Retained, Snapshot};

/// Most of what a document can say without secrets: routes of every kind, hosts, methods and
/// headers, policies of several kinds, apps and subscriptions, two tenants.
const SEED: &str = r#"
tenants: [{name: acme}, {name: other}]
upstreams:
  - {name: be, tenant: acme, targets: [{url: "http://127.0.0.1:9001", weight: 2}, {url: "http://127.0.0.1:9002"}],
     timeouts: {connect: 2s, request: 30s}}
  - {name: be, tenant: other, targets: [{url: "http://[::1]:9003"}]}
policies:
  - {name: rps, tenant: acme, rate_limit: {limit: 100, window: 1s, key: app, scope: cluster, on_store_failure: local_share}}
  - {name: ip, tenant: acme, rate_limit: {limit: 10, window: 1s, key: "header:x-user", scope: local, algorithm: token_bucket, burst: 20}}
  - {name: daily, tenant: acme, quota: {limit: 10000, period: day, key: app}}
  - {name: office, tenant: acme, ip_filter: {allow: ["10.0.0.0/8", "::1/128"]}}
services:
  - name: orders
    tenant: acme
    version: v1
    auth: [api_key]
    approval: auto
    upstream: be
    policies: [rps, daily, office]
    routes:
      - {paths: ["/orders", "=/orders/export"], methods: [GET, POST], hosts: ["api.example.com", "*.example.com"], strip_prefix: true}
      - {paths: ["/v2/orders/", "~^/orders/[0-9]+$"], headers: {x-version: "2"}}
  - {name: open, tenant: acme, upstream: be, policies: [ip], routes: [{paths: ["/"]}]}
  - {name: open, tenant: other, upstream: be, routes: [{paths: ["/other"]}]}
apps: [{name: mobile, tenant: acme}, {name: web, tenant: acme}]
subscriptions:
  - {app: mobile, service: orders, tenant: acme}
  - {app: web, service: orders, tenant: acme, status: approved}
"#;

/// Values an attacker or a careless operator writes where a field's value goes.
fn hostile() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "/",
            "=",
            "~",
            "~(",
            "~^/a{99999}",
            "=/a/../b",
            "/a b",
            "/x?y",
            "http://",
            "http://[::1",
            "ftp://x",
            "http://127.0.0.1:0",
            "*.",
            "*",
            "..",
            "a..b",
            "-",
            "x".repeat(300).leak(),
            "0s",
            "-1s",
            "1e309",
            "99999999999999999999",
            "header:",
            "claim:",
            "10.0.0.0/33",
            "::/129",
            "é",
            "\u{0}",
            "GET ",
            "acme",
            "other",
            "be",
            "orders",
            "mobile",
            "rps",
            "manual",
            "approved",
            "token_bucket",
        ])
        .prop_map(|s: &str| Value::from(s)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(Value::Array(vec![])),
        Just(serde_json::json!({})),
    ]
}

#[derive(Clone, Debug)]
enum Edit {
    /// Replace the value at the walk's end.
    Replace(Value),
    /// Remove it from its object or array.
    Remove,
    /// Copy it next to itself (a duplicate list item, or the same key under another name).
    Duplicate,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![4 => hostile().prop_map(Edit::Replace), 2 => Just(Edit::Remove), 1 => Just(Edit::Duplicate)]
}

/// Applies `edit` at the node reached by following `walk` (each step picks a child).
fn apply(root: &mut Value, walk: &[prop::sample::Index], edit: Edit) {
    let mut node = root;
    for (depth, step) in walk.iter().enumerate() {
        let last = depth + 1 == walk.len();
        let has_children = match &*node {
            Value::Object(map) => !map.is_empty(),
            Value::Array(items) => !items.is_empty(),
            _ => false,
        };
        if !has_children {
            if let Edit::Replace(v) = edit {
                *node = v;
            }
            return;
        }
        match node {
            Value::Object(map) => {
                let key = map.keys().nth(step.index(map.len())).unwrap().clone();
                if last {
                    match &edit {
                        Edit::Remove => {
                            map.remove(&key);
                        }
                        Edit::Duplicate => {
                            let v = map[&key].clone();
                            map.insert(format!("{key}_2"), v);
                        }
                        Edit::Replace(v) => {
                            map.insert(key, v.clone());
                        }
                    }
                    return;
                }
                node = map.get_mut(&key).unwrap();
            }
            Value::Array(items) => {
                let i = step.index(items.len());
                if last {
                    match &edit {
                        Edit::Remove => {
                            items.remove(i);
                        }
                        Edit::Duplicate => {
                            let v = items[i].clone();
                            items.insert(i, v);
                        }
                        Edit::Replace(v) => items[i] = v.clone(),
                    }
                    return;
                }
                node = &mut items[i];
            }
            _ => unreachable!("checked above"),
        }
    }
}

/// The control plane's checks of an apply (duplicates, each resource, references); the
/// specs when they all pass, else what failed.
fn checked(text: &str) -> Result<Vec<tollgate_proto::Spec>, Vec<String>> {
    let specs = Document::parse(text).map_err(|e| vec![e])?.into_specs();
    let mut errors = Vec::new();
    check_duplicates(&specs, &mut errors);
    for s in &specs {
        validate_spec(s, &mut errors);
    }
    let config: BTreeMap<_, _> = specs.iter().map(|s| (s.key(), s.clone())).collect();
    check_references(&config, &mut errors);
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors.iter().map(ToString::to_string).collect())
    }
}

/// What every edge does with an accepted config: decode and compile it.
fn edge_compiles(specs: &[tollgate_proto::Spec]) -> Result<(), String> {
    let state = ConfigState::from_resources(7, specs.iter().map(|s| s.to_resource(7)))
        .map_err(|e| format!("{e:?}"))?;
    Snapshot::compile(&state, &mut Retained::default())
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

fn seed_tree() -> Value {
    let doc = Document::parse(SEED).expect("the seed parses");
    serde_json::to_value(&doc).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Documents edited as trees: what the validator accepts, the edge compiles.
    #[test]
    fn fuzz_what_the_validator_accepts_the_edge_compiles(
        edits in prop::collection::vec((prop::collection::vec(any::<prop::sample::Index>(), 1..7), edit()), 1..4),
    ) {
        let mut tree = seed_tree();
        for (walk, e) in edits {
            apply(&mut tree, &walk, e);
        }
        let text = tree.to_string();
        if let Ok(specs) = checked(&text) {
            let compiled = edge_compiles(&specs);
            prop_assert!(compiled.is_ok(), "accepted but the edge refuses it: {:?}\n{}", compiled, text);
        }
    }

    /// Raw text edits of the YAML: the parser and validator never panic.
    #[test]
    fn fuzz_mangled_yaml_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut text = SEED.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let i = at.index(text.len() + 1);
            match op {
                0 if i < text.len() => text[i] = byte,
                1 if i < text.len() => {
                    text.remove(i);
                }
                _ => text.insert(i, byte),
            }
        }
        let text = String::from_utf8_lossy(&text);
        if let Ok(specs) = checked(&text) {
            let compiled = edge_compiles(&specs);
            prop_assert!(compiled.is_ok(), "accepted but the edge refuses it: {:?}\n{}", compiled, text);
        }
    }
}

#[test]
fn the_seed_is_accepted_and_compiles() {
    let specs = checked(SEED).unwrap();
    edge_compiles(&specs).unwrap();
}
