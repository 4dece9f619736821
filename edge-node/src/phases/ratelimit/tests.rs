use std::collections::HashMap;

use tollgate_proto::Document;

use super::*;
use crate::counters::Mode;

fn limits(policies: &str) -> RateLimits {
    let doc = Document::parse(&format!("policies: [{policies}]")).unwrap();
    let mut out = RateLimits::default();
    for p in &doc.policies {
        out.add(&p.tenant, p, p.rate_limit.as_ref().unwrap()).unwrap();
    }
    out
}

fn caller<'a>(headers: &'a HeaderMap, consumer: Option<&'a Consumer>) -> Caller<'a> {
    Caller {
        remote: "10.0.0.7:5000".parse().unwrap(),
        consumer,
        tenant: "t",
        service: "s",
        headers,
    }
}

fn app(name: &str, claims: Option<serde_json::Value>) -> Consumer {
    Consumer {
        tenant: "t".into(),
        app: name.into(),
        credential_header: http::header::AUTHORIZATION,
        key_id: None,
        claims: claims.map(|c| Arc::new(c.as_object().unwrap().clone())),
    }
}

#[test]
fn keys_count_by_app_header_claim_or_the_address_when_missing() {
    let h = HeaderMap::new();
    let mut with = HeaderMap::new();
    with.insert("x-user", HeaderValue::from_static("u1"));
    let a = app("mobile", Some(serde_json::json!({"sub": "s-9", "org": 42})));
    let cases = [
        ("app", caller(&h, Some(&a)), "app:mobile"),
        ("app", caller(&h, None), "ip:10.0.0.7"),
        ("tenant", caller(&h, None), "tenant:t"),
        ("service", caller(&h, None), "service:s"),
        ("ip", caller(&h, Some(&a)), "ip:10.0.0.7"),
        ("header:x-user", caller(&with, None), "header:u1"),
        ("header:x-user", caller(&h, None), "ip:10.0.0.7"),
        ("claim:sub", caller(&h, Some(&a)), "claim:s-9"),
        ("claim:org", caller(&h, Some(&a)), "claim:42"),
        ("claim:missing", caller(&h, Some(&a)), "ip:10.0.0.7"),
    ];
    for (key, caller, want) in cases {
        assert_eq!(caller.key(&KeyOf::parse(key).unwrap()), want, "{key}");
    }
    assert!(KeyOf::parse("header:bad name").is_err());
    // Long values are cut on a character boundary, never inside one (no panic), and stay
    // short whatever bytes a client sends.
    let long = app("m", Some(serde_json::json!({"name": "é".repeat(300)})));
    let key = caller(&h, Some(&long)).key(&KeyOf::parse("claim:name").unwrap());
    assert!(key.len() <= 6 + MAX_KEY_BYTES && key.ends_with('é'), "{key}");
    let mut raw = HeaderMap::new();
    raw.insert("x-user", HeaderValue::from_bytes(&[0xff; 400]).unwrap());
    let key = caller(&raw, None).key(&KeyOf::parse("header:x-user").unwrap());
    assert!(key.len() <= 7 + MAX_KEY_BYTES, "{}", key.len());
}

#[test]
fn every_policy_applies_and_a_refusal_is_taken_back_from_the_others() {
    let l = limits(
        "{name: wide, tenant: t, rate_limit: {limit: 5, window: 1s, key: tenant, scope: local}},
         {name: narrow, tenant: t, rate_limit: {limit: 2, window: 1s, key: header:x-user, scope: local}}",
    );
    let peers = Peers::new("me");
    let mut u1 = HeaderMap::new();
    u1.insert("x-user", HeaderValue::from_static("u1"));
    let mut u2 = HeaderMap::new();
    u2.insert("x-user", HeaderValue::from_static("u2"));
    let (first, ok) = l.check(&caller(&u1, None), &peers);
    assert!(ok.is_ok());
    assert_eq!(
        first,
        Some(LimitHeaders {
            limit: 2,
            remaining: 1,
            reset_secs: first.as_ref().unwrap().reset_secs,
            retry_after: None
        }),
        "the tightest limit's headers"
    );
    assert!(l.check(&caller(&u1, None), &peers).1.is_ok());
    // u1's third: refused by `narrow`, and `wide` gives its count back.
    for _ in 0..3 {
        let (h, refused) = l.check(&caller(&u1, None), &peers);
        assert!(matches!(refused, Err(ProxyError::RateLimited(_))));
        let h = h.unwrap();
        assert_eq!((h.remaining, h.retry_after.is_some()), (0, true));
    }
    // So the tenant-wide limit has 3 left for u2 (2 admitted by narrow), not 0.
    assert!(l.check(&caller(&u2, None), &peers).1.is_ok());
    assert!(l.check(&caller(&u2, None), &peers).1.is_ok());
    let (h, _) = l.check(&caller(&u2, None), &peers);
    assert!(h.unwrap().retry_after.is_some(), "u2 reached narrow's limit too");
    let usage = peers.counters.usage(&l.limits[0].limiter.id, unix_ms());
    assert_eq!(usage[0].1.round(), 4.0, "wide counted only admitted requests");
}

#[test]
fn headers_go_on_an_answer() {
    let mut h = HeaderMap::new();
    LimitHeaders {
        limit: 100,
        remaining: 0,
        reset_secs: 1,
        retry_after: Some(1),
    }
    .apply(&mut h);
    assert_eq!(h["ratelimit-limit"], "100");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-reset"], "1");
    assert_eq!(h["retry-after"], "1");
}

#[test]
fn a_cluster_token_bucket_does_not_compile_and_ids_name_the_shape() {
    let doc = Document::parse(
        "policies: [{name: tb, tenant: t, rate_limit: {limit: 5, window: 1s, algorithm: token_bucket, burst: 9}}]",
    )
    .unwrap();
    let p = &doc.policies[0];
    let mut out = RateLimits::default();
    assert!(out
        .add("t", p, p.rate_limit.as_ref().unwrap())
        .unwrap_err()
        .contains("scope: local"));
    let l = limits("{name: p, tenant: t, rate_limit: {limit: 100, window: 1m, key: ip}}");
    let ids: HashMap<&str, bool> = l.ids().map(|(id, c)| (id.as_ref(), c)).collect();
    assert_eq!(ids, HashMap::from([("60000ms/100/ip/t/p", true)]));
    let _ = Mode::Cluster;
}
