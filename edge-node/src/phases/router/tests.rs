use std::collections::BTreeMap;

use super::*;
use crate::upstream::forward::stripped_path;

fn route(paths: &[&str]) -> Route {
    Route {
        paths: paths.iter().map(|p| p.to_string()).collect(),
        ..Route::default()
    }
}

fn router(routes: Vec<(Route, &'static str)>) -> Router<&'static str> {
    let mut b = RouterBuilder::default();
    for (r, name) in routes {
        b.add_route(&r, name).unwrap();
    }
    b.build()
}

fn get(r: &Router<&'static str>, host: Option<&str>, path: &str) -> Option<&'static str> {
    request(r, &Method::GET, host, path, &HeaderMap::new())
}

fn request(
    r: &Router<&'static str>,
    method: &Method,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'static str> {
    r.route(&RequestInfo {
        method,
        host,
        path,
        headers,
    })
    .map(|m| *m.target)
}

#[test]
fn prefixes_are_segment_aware() {
    let r = router(vec![(route(&["/orders"]), "orders"), (route(&["/a/b/"]), "ab")]);
    assert_eq!(get(&r, None, "/orders"), Some("orders"));
    assert_eq!(get(&r, None, "/orders/"), Some("orders"));
    assert_eq!(get(&r, None, "/orders/1/items"), Some("orders"));
    assert_eq!(get(&r, None, "/ordersx"), None);
    assert_eq!(get(&r, None, "/order"), None);
    assert_eq!(get(&r, None, "/a/b"), Some("ab"));
    assert_eq!(get(&r, None, "/a/b/c"), Some("ab"));
    assert_eq!(get(&r, None, "/a/bc"), None);
    assert_eq!(get(&r, None, "/"), None);
}

#[test]
fn root_prefix_matches_everything_last() {
    let r = router(vec![(route(&["/"]), "root"), (route(&["/api"]), "api")]);
    assert_eq!(get(&r, None, "/"), Some("root"));
    assert_eq!(get(&r, None, "/anything/else"), Some("root"));
    assert_eq!(get(&r, None, "/api/x"), Some("api"));
}

#[test]
fn exact_beats_longest_prefix_beats_regex() {
    let r = router(vec![
        (route(&["~^/v[0-9]+/orders$"]), "regex"),
        (route(&["/v1"]), "short"),
        (route(&["/v1/orders"]), "long"),
        (route(&["=/v1/orders"]), "exact"),
    ]);
    assert_eq!(get(&r, None, "/v1/orders"), Some("exact"));
    assert_eq!(get(&r, None, "/v1/orders/7"), Some("long"));
    assert_eq!(get(&r, None, "/v1/other"), Some("short"));
    assert_eq!(get(&r, None, "/v2/orders"), Some("regex"));
    assert_eq!(get(&r, None, "/v2/orders/7"), None);
    // Exact means exact: no trailing slash leniency.
    let e = router(vec![(route(&["=/x"]), "x")]);
    assert_eq!(get(&e, None, "/x/"), None);
}

#[test]
fn regexes_go_in_config_order() {
    let r = router(vec![
        (route(&["~^/items/[0-9]+$"]), "first"),
        (route(&["~^/items/.*$"]), "second"),
    ]);
    assert_eq!(get(&r, None, "/items/42"), Some("first"));
    assert_eq!(get(&r, None, "/items/abc"), Some("second"));
}

/// The regex set finds what trying the regexes one by one finds, skipping regexes whose
/// routes refuse the request (here by method).
#[test]
fn the_regex_set_routes_like_the_regexes_one_by_one() {
    let mut post_only = route(&["~^/items/[0-9]+$"]);
    post_only.methods = vec!["POST".into()];
    let mut r = router(vec![
        (post_only, "post-only"),
        (route(&["~^/items/[0-9]+$", "~^/v[12]/x"]), "numbered"),
        (route(&["~^/items/.*$"]), "any-item"),
        (route(&["~/deep/[a-z]+$"]), "unanchored"),
        (route(&["~^/items/[0-9]+$"]), "shadowed"),
    ]);
    assert!(r.regex_set.is_some());
    let paths = [
        "/items/42",
        "/items/abc",
        "/v2/x/y",
        "/a/b/deep/end",
        "/nothing",
        "/items/",
    ];
    let with_set: Vec<_> = paths.iter().map(|p| get(&r, None, p)).collect();
    assert_eq!(
        with_set,
        [
            Some("numbered"),
            Some("any-item"),
            Some("numbered"),
            Some("unanchored"),
            None,
            Some("any-item")
        ]
    );
    r.regex_set = None;
    let one_by_one: Vec<_> = paths.iter().map(|p| get(&r, None, p)).collect();
    assert_eq!(with_set, one_by_one);
}

/// Many routes on one path, told apart by host, are looked up by host; the answer is the one
/// a scan of every route gives.
#[test]
fn the_host_index_routes_like_a_scan() {
    let on_host = |hosts: &[&str]| {
        let mut r = route(&["/api"]);
        r.hosts = hosts.iter().map(|h| h.to_string()).collect();
        r
    };
    let names = ["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9"];
    let mut routes: Vec<(Route, &'static str)> = vec![(on_host(&[]), "any")];
    for (i, n) in names.iter().enumerate() {
        routes.push((on_host(&[&format!("h{i}.example.com")]), n));
    }
    let mut post = on_host(&["h3.example.com"]);
    post.methods = vec!["POST".into()];
    routes.push((post, "h3-post-only"));
    routes.push((on_host(&["h4.example.com"]), "h4-shadowed"));
    routes.push((on_host(&["*.example.com", "exact.org"]), "wildcard"));
    let mut r = router(routes);
    assert!(r.prefix["/api"].by_host.is_some());
    let hosts = [
        Some("h3.example.com"),
        Some("H4.Example.COM:8080"),
        Some("other.example.com"),
        Some("exact.org"),
        Some("nowhere.net"),
        None,
    ];
    let indexed: Vec<_> = hosts.iter().map(|h| get(&r, *h, "/api/x")).collect();
    assert_eq!(
        indexed,
        [
            Some("h3"),
            Some("h4"),
            Some("wildcard"),
            Some("wildcard"),
            Some("any"),
            Some("any")
        ]
    );
    r.prefix.get_mut("/api").unwrap().by_host = None;
    let scanned: Vec<_> = hosts.iter().map(|h| get(&r, *h, "/api/x")).collect();
    assert_eq!(indexed, scanned);
}

#[test]
fn more_specific_host_wins_and_hosts_ignore_case_and_port() {
    let mut exact = route(&["/api"]);
    exact.hosts = vec!["API.example.com".into()];
    let mut wild = route(&["/api"]);
    wild.hosts = vec!["*.example.com".into()];
    let mut deeper = route(&["/api"]);
    deeper.hosts = vec!["*.eu.example.com".into()];
    let any = route(&["/api"]);
    let r = router(vec![
        (any, "any"),
        (wild, "wild"),
        (deeper, "deeper"),
        (exact, "exact"),
    ]);
    assert_eq!(get(&r, Some("api.example.com:8080"), "/api"), Some("exact"));
    assert_eq!(get(&r, Some("Api.Example.COM"), "/api"), Some("exact"));
    assert_eq!(get(&r, Some("x.example.com"), "/api"), Some("wild"));
    assert_eq!(get(&r, Some("a.eu.example.com"), "/api"), Some("deeper"));
    // The wildcard needs at least one label in front of the domain.
    assert_eq!(get(&r, Some("example.com"), "/api"), Some("any"));
    assert_eq!(get(&r, None, "/api"), Some("any"));
}

#[test]
fn a_host_mismatch_falls_back_to_a_shorter_prefix() {
    let mut long = route(&["/api/v1"]);
    long.hosts = vec!["a.test".into()];
    let r = router(vec![(long, "long"), (route(&["/api"]), "short")]);
    assert_eq!(get(&r, Some("a.test"), "/api/v1/x"), Some("long"));
    assert_eq!(get(&r, Some("b.test"), "/api/v1/x"), Some("short"));
}

#[test]
fn constrained_routes_win_among_equals_and_filter() {
    let plain = route(&["/orders"]);
    let mut post = route(&["/orders"]);
    post.methods = vec!["POST".into()];
    let mut beta = route(&["/orders"]);
    beta.methods = vec!["POST".into()];
    beta.headers = BTreeMap::from([("x-beta".to_string(), "1".to_string())]);
    let r = router(vec![(plain, "plain"), (post, "post"), (beta, "beta")]);
    let none = HeaderMap::new();
    let mut beta_headers = HeaderMap::new();
    beta_headers.insert("X-Beta", HeaderValue::from_static("1"));
    assert_eq!(request(&r, &Method::GET, None, "/orders", &none), Some("plain"));
    assert_eq!(request(&r, &Method::POST, None, "/orders", &none), Some("post"));
    assert_eq!(
        request(&r, &Method::POST, None, "/orders", &beta_headers),
        Some("beta")
    );
    assert_eq!(
        request(&r, &Method::GET, None, "/orders", &beta_headers),
        Some("plain")
    );

    let mut only_put = route(&["/x"]);
    only_put.methods = vec!["PUT".into()];
    let r = router(vec![(only_put, "put")]);
    assert_eq!(request(&r, &Method::GET, None, "/x", &none), None);
}

#[test]
fn equal_routes_keep_config_order() {
    let r = router(vec![(route(&["/same"]), "first"), (route(&["/same"]), "second")]);
    assert_eq!(get(&r, None, "/same"), Some("first"));
}

#[test]
fn strip_prefix_reports_what_to_drop() {
    let mut r1 = route(&["/svc/", "=/exact"]);
    r1.strip_prefix = true;
    let r = router(vec![(r1, "svc")]);
    let none = HeaderMap::new();
    let info = |path| RequestInfo {
        method: &Method::GET,
        host: None,
        path,
        headers: &none,
    };
    let m = r.route(&info("/svc/orders/1")).unwrap();
    assert_eq!(stripped_path("/svc/orders/1", m.strip_len), "/orders/1");
    let m = r.route(&info("/svc")).unwrap();
    assert_eq!(stripped_path("/svc", m.strip_len), "/");
    let m = r.route(&info("/exact")).unwrap();
    assert_eq!(stripped_path("/exact", m.strip_len), "/");
    assert_eq!(stripped_path("/keep", None), "/keep");
}

#[test]
fn bad_routes_are_refused_with_the_field() {
    let mut b: RouterBuilder<&str> = RouterBuilder::default();
    let err = b.add_route(&route(&["/ok", "~^("]), "x").unwrap_err();
    assert!(err.starts_with("paths[1]: invalid regex"), "{err}");
    let err = b.add_route(&route(&["nope"]), "x").unwrap_err();
    assert!(err.starts_with("paths[0]: invalid path"), "{err}");
}

#[test]
fn host_port_is_stripped() {
    assert_eq!(host_without_port("a.test:80"), "a.test");
    assert_eq!(host_without_port("[::1]:8080"), "[::1]");
    assert_eq!(host_without_port("a.test."), "a.test");
    assert_eq!(host_without_port("a.test"), "a.test");
}

mod fuzz;
