//! Regression tests named after the public CVEs of other gateways that they guard against.
//! Each drives a real control plane and a real edge process the way an attacker would (raw
//! request lines, raw HTTP/2 frames, spoofed headers), and fails if the hole reopens.
//!
//! The fixture puts an authenticated `/admin` next to an open `/public` and an open catch-all
//! `/` on one upstream: a request that dodges the `/admin` rule lands on an open route and
//! reaches the upstream, which the tests see.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_integration_tests::edge::{send, EdgeNode, Reply, Upstream};
use tollgate_integration_tests::{run_cli, wait_for, Sandbox};
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::{
    ApplyRequest, ClusterInitRequest, ClusterStatusRequest, CreateTokenRequest, ExportRequest, GetRequest,
    ListTokensRequest, SetSecretRequest,
};

/// Tenant t: `/admin` (API key, app `ops` subscribed), `/public` and `/` open; `extra` is
/// appended (more policies and services).
fn config(upstream: &str, extra_services: &str, policies: &str) -> String {
    format!(
        r#"
tenants: [{{name: t}}]
upstreams: [{{name: up, tenant: t, targets: [{{url: "{upstream}"}}]}}]
policies: [{policies}]
services:
  - {{name: admin, tenant: t, upstream: up, auth: [api_key], routes: [{{paths: ["/admin"]}}]}}
  - {{name: public, tenant: t, upstream: up, routes: [{{paths: ["/public"]}}]}}
  - {{name: site, tenant: t, upstream: up, routes: [{{paths: ["/"]}}]}}
{extra_services}
apps: [{{name: ops, tenant: t}}]
subscriptions: [{{app: ops, service: admin, tenant: t, status: approved}}]
"#
    )
}

struct Fixture {
    sb: Sandbox,
    edge: EdgeNode,
    up: Upstream,
}

impl Fixture {
    fn start(extra_services: &str, policies: &str) -> Fixture {
        let up = Upstream::start();
        let sb = Sandbox::cluster(1);
        let file = sb.file("config.yaml", &config(&up.url(), extra_services, policies));
        sb.cli(0, &["apply", "-f", &file]).ok();
        let edge = EdgeNode::start(&sb, "edge-a");
        wait_for("the edge to route", Duration::from_secs(10), || {
            (edge.request("GET", "/public/ready", &[]).status == 200).then_some(())
        });
        Fixture { sb, edge, up }
    }

    fn key(&self) -> String {
        let out = self
            .sb
            .cli(
                0,
                &["key", "create", "--app", "ops", "--tenant", "t", "-o", "json"],
            )
            .ok();
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        wait_for("the key to reach the edge", Duration::from_secs(5), || {
            (self.edge.get_with_key("/admin", &key).status == 200).then_some(())
        });
        key
    }

    /// Sends a raw request; asserts that the upstream saw nothing of it.
    fn refused(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let before = self.up.requests().len();
        let r = send(self.edge.proxy, method, path, headers, b"")
            .unwrap_or_else(|| panic!("no answer to {method} {path:?} {headers:?}"));
        let seen = self.up.requests();
        assert_eq!(
            seen.len(),
            before,
            "{method} {path:?} {headers:?} reached the upstream ({r:?}): {:?}",
            &seen[before..]
        );
        r
    }

    /// Paths the upstream has received.
    fn upstream_paths(&self) -> Vec<String> {
        self.up
            .requests()
            .iter()
            .map(|r| r["path"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

fn assert_refused(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    if !code.is_empty() {
        assert_eq!(r.error_code(), code, "{what}");
    }
}

#[test]
fn cve_2019_9901_dot_segments_cannot_reach_a_protected_route() {
    let f = Fixture::start("", "");
    // Unauthenticated, the protected route itself is closed.
    assert_refused(
        &f.refused("GET", "/admin", &[]),
        401,
        "missing_credential",
        "/admin",
    );
    for path in [
        "/public/../admin",
        "/public/../admin/",
        "/public/./../admin",
        "/public/%2e%2e/admin",
        "/public/%2E./admin",
        "/public/.%2e/admin",
        "/./admin",
        "/public/x/../../admin",
        "/../admin",
        "/public/..",
    ] {
        assert_refused(&f.refused("GET", path, &[]), 400, "bad_request", path);
    }
    // In absolute form (a proxy-style request line) too.
    assert_refused(
        &f.refused("GET", &format!("http://{}/public/../admin", f.edge.proxy), &[]),
        400,
        "bad_request",
        "absolute-form",
    );
    assert!(
        !f.upstream_paths().iter().any(|p| p.contains("admin")),
        "{:?}",
        f.upstream_paths()
    );
}

#[test]
fn cve_2021_29492_encoded_slashes_and_escapes_cannot_dodge_a_rule() {
    let f = Fixture::start("", "");
    for path in [
        "/admin%2Fx",
        "/admin%2fx",
        "/public%2F..%2Fadmin",
        "/public%2f%2e%2e%2fadmin",
        "/public%5C..%5Cadmin",
        "/public%5c..%5cadmin",
        "/admin%00",
        "/public/%00/../admin",
        "/public\\..\\admin",
        "//admin",
        "/public//../admin",
        "/%zzadmin",
        // Path parameters: servlet containers strip `;...` and would see `/admin`.
        "/admin;jsessionid=x",
        "/public/..;/admin",
    ] {
        assert_refused(&f.refused("GET", path, &[]), 400, "", path);
    }
    // Escaped unreserved characters are decoded before routing: `/%61dmin` is `/admin`, and
    // needs its credential.
    for path in ["/%61dmin", "/%61%64%6D%69%6E", "/adm%69n/users", "/%61dmin/"] {
        assert_refused(&f.refused("GET", path, &[]), 401, "missing_credential", path);
    }
    let paths = f.upstream_paths();
    assert!(paths.iter().all(|p| p == "/public/ready"), "{paths:?}");
    // With the credential, the upstream receives the normalized path (what was matched).
    let key = f.key();
    let r = f.edge.get_with_key("/%61dmin/%75sers?q=%61", &key);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/admin/users?q=%61");
}

#[test]
fn cve_2019_9900_nul_in_headers_is_refused() {
    let f = Fixture::start("", "");
    for (name, value) in [
        ("x-evil", "a\0b"),
        ("x-evil", "\0"),
        ("x-evil", "a\x01b"),
        ("x-evil", "a\x7fb"),
        ("x-evil", "a\rb"),
        ("x-evil", "a\nb"),
        ("x-ev\0il", "a"),
    ] {
        let r = f.refused("GET", "/public/x", &[(name, value)]);
        assert_eq!(r.status, 400, "{name:?}: {value:?} -> {r:?}");
    }
    // A NUL cannot carry a credential either.
    let key = f.key();
    let with_nul = format!("{key}\0");
    let r = f.refused("GET", "/admin", &[("apikey", &with_nul)]);
    assert_eq!(r.status, 400, "{r:?}");
    // A tab is legal in a value and passes.
    let r = f.edge.request("GET", "/public/ok", &[("x-fine", "a\tb")]);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn cve_2022_24112_spoofed_forwarded_for_cannot_pass_an_ip_rule() {
    let f = Fixture::start(
        r#"
  - {name: office, tenant: t, upstream: up, policies: [office], routes: [{paths: ["/office"]}]}
  - {name: office-lb, tenant: t, upstream: up, policies: [office-behind-lb], routes: [{paths: ["/office-lb"]}]}
  - {name: office-auth, tenant: t, upstream: up, auth: [api_key], policies: [office], routes: [{paths: ["/office-auth"]}]}
"#,
        r#"{name: office, tenant: t, ip_filter: {allow: ["10.0.0.0/8"]}},
           {name: office-behind-lb, tenant: t, ip_filter: {allow: ["10.0.0.0/8"], trusted_proxies: ["127.0.0.1"]}}"#,
    );
    // No trusted proxies: the TCP peer (127.0.0.1) is the client, whatever it claims.
    for headers in [
        vec![],
        vec![("x-forwarded-for", "10.1.2.3")],
        vec![("x-real-ip", "10.1.2.3")],
        vec![("x-forwarded-for", "10.1.2.3"), ("x-real-ip", "10.1.2.3")],
        vec![("forwarded", "for=10.1.2.3")],
        vec![("x-forwarded-for", "10.1.2.3, 10.1.2.4")],
    ] {
        let r = f.refused("GET", "/office", &headers);
        assert_refused(&r, 403, "ip_denied", &format!("/office {headers:?}"));
    }
    // The filter runs before authentication: a refused client learns nothing about keys.
    assert_refused(
        &f.refused("GET", "/office-auth", &[]),
        403,
        "ip_denied",
        "/office-auth",
    );
    assert_refused(
        &f.refused("GET", "/office-auth", &[("apikey", "tgk_guess")]),
        403,
        "ip_denied",
        "/office-auth with a key",
    );

    // 127.0.0.1 as a trusted proxy: its X-Forwarded-For is believed, from the right.
    let r = f
        .edge
        .request("GET", "/office-lb", &[("x-forwarded-for", "10.1.2.3")]);
    assert_eq!(r.status, 200, "{r:?}");
    for headers in [
        vec![("x-forwarded-for", "10.1.2.3, 8.8.8.8")],
        vec![("x-forwarded-for", "10.1.2.3"), ("x-forwarded-for", "8.8.8.8")],
        vec![("x-real-ip", "10.1.2.3")],
        vec![("x-forwarded-for", "10.1.2.3, garbage")],
        vec![("x-forwarded-for", "unknown")],
        vec![],
    ] {
        let r = f.refused("GET", "/office-lb", &headers);
        assert_refused(&r, 403, "ip_denied", &format!("/office-lb {headers:?}"));
    }
    // What the client put left of its real address does not matter either way.
    let r = f
        .edge
        .request("GET", "/office-lb", &[("x-forwarded-for", "8.8.8.8, 10.1.2.3")]);
    assert_eq!(r.status, 200, "{r:?}");
}

/// A raw h2 client that opens `n` streams on one connection and resets each at once.
/// Returns how many it managed to open and how the connection ended (`None`: still open
/// after the bound).
async fn rapid_reset(addr: SocketAddr, n: usize) -> (usize, Option<Result<(), h2::Error>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut opened = 0;
    for _ in 0..n {
        client = match tokio::time::timeout(Duration::from_secs(5), client.ready()).await {
            Ok(Ok(c)) => c,
            _ => break,
        };
        let req = http::Request::get(format!("http://{addr}/public/rapid-reset"))
            .body(())
            .unwrap();
        match client.send_request(req, true) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .ok()
        .map(|joined| joined.expect("the connection task panicked"));
    (opened, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cve_2023_44487_h2_rapid_reset_is_bounded() {
    let f = Fixture::start("", "");
    let before = f.up.requests().len();
    let started = Instant::now();
    let (opened, ended) = rapid_reset(f.edge.proxy, 5000).await;
    let took = started.elapsed();
    let reached = f.up.requests().len() - before;
    let ended = ended.unwrap_or_else(|| {
        panic!("the edge kept the connection open after {opened} opened-and-reset streams")
    });
    eprintln!(
        "rapid reset: {opened} streams opened before the edge stopped it after {took:?}; \
         {reached} reached the upstream; connection ended with {ended:?}"
    );
    if let Err(e) = &ended {
        // GOAWAY from the edge (ENHANCE_YOUR_CALM), or the socket it then closed.
        assert!(
            e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
            "{e:?}"
        );
    }
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(
        reached < 100,
        "{reached} of the reset requests reached the upstream"
    );

    // The edge still serves, over h2 and h1.
    let tcp = tokio::net::TcpStream::connect(f.edge.proxy).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/public/after", f.edge.proxy))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    let edge = f.edge.proxy;
    let r = tokio::task::spawn_blocking(move || send(edge, "GET", "/public/after-h1", &[], b""))
        .await
        .unwrap()
        .expect("an h1 answer");
    assert_eq!(r.status, 200);
}

/// Default keys other gateways shipped or people try first.
const DEFAULT_KEYS: [&str; 8] = [
    "admin",
    "edd1c9f034335f136f87ad84b625c8f1",
    "4054f7cf07e344346cd3f287985e76a2",
    "",
    "tollgate",
    "changeme",
    "password",
    "secret",
];

/// Every admin call it tries, with `token` presented as a bearer token and as `X-API-KEY`;
/// returns those that succeeded.
async fn admin_calls_allowed(url: &str, token: &str) -> Vec<&'static str> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let bearer = format!("Bearer {token}");
    let key = token.to_string();
    let mut c = AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        let md = req.metadata_mut();
        md.insert("authorization", bearer.parse().unwrap());
        md.insert("x-api-key", key.parse().unwrap());
        Ok(req)
    });
    let mut allowed = Vec::new();
    let get = GetRequest {
        kind: "services".into(),
        ..Default::default()
    };
    if c.get(get).await.is_ok() {
        allowed.push("get");
    }
    if c.export(ExportRequest::default()).await.is_ok() {
        allowed.push("export");
    }
    let local = ExportRequest {
        local: true,
        ..Default::default()
    };
    if c.export(local).await.is_ok() {
        allowed.push("export --local");
    }
    let apply = ApplyRequest {
        document: "tenants: [{name: evil}]".into(),
        prune: false,
    };
    if c.apply(apply).await.is_ok() {
        allowed.push("apply");
    }
    let token_req = CreateTokenRequest {
        role: "cluster-admin".into(),
        label: "mine now".into(),
        tenant: String::new(),
    };
    if c.create_token(token_req).await.is_ok() {
        allowed.push("create_token");
    }
    if c.list_tokens(ListTokensRequest {}).await.is_ok() {
        allowed.push("list_tokens");
    }
    let secret = SetSecretRequest {
        tenant: "t".into(),
        name: "s".into(),
        value: b"x".to_vec(),
    };
    if c.set_secret(secret).await.is_ok() {
        allowed.push("set_secret");
    }
    for local in [true, false] {
        if c.cluster_status(ClusterStatusRequest { local }).await.is_ok() {
            allowed.push("cluster_status");
        }
    }
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cve_2020_13945_no_default_admin_key() {
    // A fresh control plane, not initialized: no token exists yet.
    let mut sb = Sandbox::uninitialized();
    let url = sb.nodes[0].url();
    for key in DEFAULT_KEYS {
        let allowed = admin_calls_allowed(&url, key).await;
        assert!(
            allowed.is_empty(),
            "before init, {key:?} was accepted for {allowed:?}"
        );
        let out = run_cli(sb.dir.path(), &url, Some(key), &["get", "services"], None);
        assert_ne!(out.code, 0, "before init, the CLI with {key:?}: {out:?}");
    }
    let out = run_cli(sb.dir.path(), &url, None, &["export"], None);
    assert_ne!(out.code, 0, "before init, no token: {out:?}");
    // APISIX's admin API shape on the HTTP port, with its old default key.
    for (method, path) in [
        ("GET", "/apisix/admin/routes"),
        ("PUT", "/apisix/admin/routes/1"),
        ("GET", "/admin"),
    ] {
        let r = send(
            sb.nodes[0].http,
            method,
            path,
            &[("x-api-key", "edd1c9f034335f136f87ad84b625c8f1")],
            b"{}",
        )
        .expect("the http port answers");
        assert!(r.status >= 400, "{method} {path}: {r:?}");
    }

    // Init mints one random token; only it works, and init cannot be repeated to mint another.
    let out = sb.cli(0, &["cluster", "init", "-o", "json"]).ok();
    let init: Value = serde_json::from_str(&out.stdout).unwrap();
    let token = init["admin_token"].as_str().unwrap().to_string();
    assert!(
        token.len() >= 32 && !DEFAULT_KEYS.contains(&token.as_str()),
        "{token}"
    );
    for key in DEFAULT_KEYS {
        let allowed = admin_calls_allowed(&url, key).await;
        assert!(
            allowed.is_empty(),
            "after init, {key:?} was accepted for {allowed:?}"
        );
    }
    let mut anon = AdminClient::connect(url.clone()).await.unwrap();
    assert!(
        anon.cluster_init(ClusterInitRequest {}).await.is_err(),
        "a second init minted another token"
    );
    sb.token = token.clone();
    let export = sb.cli(0, &["export", "-o", "json"]).ok().stdout;
    assert!(!export.contains("evil"), "a refused apply was written: {export}");
    let allowed = admin_calls_allowed(&url, &token).await;
    assert!(
        allowed.contains(&"get") && allowed.contains(&"apply") && allowed.contains(&"create_token"),
        "the minted token: {allowed:?}"
    );
}
