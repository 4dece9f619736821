//! Fuzzing the router (issue 14) against a reference written straight from the precedence in
//! the router's module docs: one linear scan over every path of every route, no maps, no
//! indexes, no `RegexSet`. Tables are drawn from a small alphabet so that paths, hosts and
//! regexes collide often, and groups grow past the size that gets a host index.
//! `PROPTEST_CASES` sets the number of cases (`scripts/fuzz` runs many more than CI).

use proptest::prelude::*;
use regex::Regex;

use super::*;

const REGEXES: &[&str] = &["~^/a", "~^/a/[0-9]+$", "~b$", "~^/(a|b)/a", "~.", "~^/ab/?$"];
const ROUTE_HOSTS: &[&str] = &["a.example", "A.Example", "*.example", "*.b.example", "b.example"];
const REQUEST_HOSTS: &[&str] = &[
    "a.example",
    "A.EXAMPLE:8080",
    "x.a.example",
    "x.b.example",
    "b.example.",
    "example",
    "[::1]:80",
];

fn segments() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "1", ""]), 0..4)
        .prop_map(|s| format!("/{}", s.join("/")))
}

fn route_path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => segments(),
        2 => segments().prop_map(|p| format!("={p}")),
        2 => prop::sample::select(REGEXES).prop_map(str::to_string),
    ]
}

fn header() -> impl Strategy<Value = (String, String)> {
    prop::sample::select(vec![("x-v", "1"), ("x-v", "2"), ("X-W", "1")])
        .prop_map(|(n, v)| (n.to_string(), v.to_string()))
}

fn a_route() -> impl Strategy<Value = Route> {
    (
        prop::collection::vec(route_path(), 1..3),
        prop::sample::subsequence(vec!["GET", "POST"], 0..=2),
        prop::sample::subsequence(ROUTE_HOSTS.to_vec(), 0..=2),
        prop::collection::btree_map("x-v|X-W", "1|2", 0..2),
        any::<bool>(),
    )
        .prop_map(|(paths, methods, hosts, headers, strip_prefix)| Route {
            paths,
            methods: methods.into_iter().map(str::to_string).collect(),
            hosts: hosts.into_iter().map(str::to_string).collect(),
            headers,
            strip_prefix,
        })
}

#[derive(Debug, Clone)]
struct Req {
    method: Method,
    host: Option<String>,
    path: String,
    headers: Vec<(String, String)>,
}

fn a_request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(vec![Method::GET, Method::POST, Method::PUT]),
        prop::option::of(prop::sample::select(REQUEST_HOSTS)),
        segments(),
        prop::sample::select(vec!["", "/", "//"]),
        prop::collection::vec(header(), 0..3),
    )
        .prop_map(|(method, host, path, tail, headers)| Req {
            method,
            host: host.map(str::to_string),
            path: format!("{path}{tail}"),
            headers,
        })
}

/// How well `route` fits the request, by the docs: `None` when its methods, hosts or headers
/// refuse it; else (host specificity, constraint count).
fn fit(route: &Route, req: &Req, header_map: &HeaderMap) -> Option<(u32, usize)> {
    if !route.methods.is_empty() && !route.methods.iter().any(|m| m == req.method.as_str()) {
        return None;
    }
    let host_rank = if route.hosts.is_empty() {
        0
    } else {
        let host = host_without_port(req.host.as_deref()?).to_ascii_lowercase();
        let rank = |pattern: &String| -> Option<u32> {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix('*') {
                // A wildcard needs at least one more label; a longer domain is more specific.
                Some(domain) => {
                    (host.ends_with(domain) && host.len() > domain.len()).then(|| 1 + domain.len() as u32)
                }
                None => (host == pattern).then_some(u32::MAX),
            }
        };
        route.hosts.iter().filter_map(rank).max()?
    };
    for (name, value) in &route.headers {
        let sent = header_map
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes());
        if !sent {
            return None;
        }
    }
    Some((
        host_rank,
        usize::from(!route.methods.is_empty()) + route.headers.len(),
    ))
}

/// A route, its fit and the length of the prefix it matched by.
type Fitting<'a> = (usize, &'a Route, (u32, usize), usize);

/// The longest key, then the best fit, then the first in config order (`max_by_key` keeps
/// the last maximum, so the scan runs in reverse).
fn best(candidates: Vec<Fitting<'_>>) -> Option<Fitting<'_>> {
    candidates
        .into_iter()
        .rev()
        .max_by_key(|&(_, _, rank, key_len)| (key_len, rank))
}

/// The reference: which route (its index) serves `req`, and the bytes to strip.
fn reference(routes: &[Route], req: &Req, header_map: &HeaderMap) -> Option<(usize, Option<usize>)> {
    // Every path of every route, in config order.
    let paths: Vec<(usize, &Route, &str)> = routes
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.paths.iter().map(move |p| (i, r, p.as_str())))
        .collect();

    let exact = paths
        .iter()
        .filter(|(_, _, p)| p.strip_prefix('=') == Some(req.path.as_str()))
        .filter_map(|&(i, r, _)| fit(r, req, header_map).map(|rank| (i, r, rank, 0)))
        .collect();
    if let Some((i, r, _, _)) = best(exact) {
        return Some((i, r.strip_prefix.then_some(req.path.len())));
    }

    let prefix = paths
        .iter()
        .filter(|(_, _, p)| p.starts_with('/'))
        .filter_map(|&(i, r, p)| {
            let key = p.trim_end_matches('/');
            let trimmed = req.path.trim_end_matches('/');
            let covers = key.is_empty() || trimmed == key || req.path.starts_with(&format!("{key}/"));
            covers.then(|| fit(r, req, header_map).map(|rank| (i, r, rank, key.len())))?
        })
        .collect();
    if let Some((i, r, _, key_len)) = best(prefix) {
        return Some((i, r.strip_prefix.then_some(key_len)));
    }

    // Regexes in the order they first appear; the first that matches and has a route that
    // fits decides.
    let mut seen: Vec<&str> = Vec::new();
    for &(_, _, p) in &paths {
        let Some(re) = p.strip_prefix('~') else { continue };
        if seen.contains(&re) {
            continue;
        }
        seen.push(re);
        if !Regex::new(re).unwrap().is_match(&req.path) {
            continue;
        }
        let same_regex = paths
            .iter()
            .filter(|(_, _, q)| q.strip_prefix('~') == Some(re))
            .filter_map(|&(i, r, _)| fit(r, req, header_map).map(|rank| (i, r, rank, 0)))
            .collect();
        if let Some((i, _, _, _)) = best(same_regex) {
            return Some((i, None));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// The compiled router picks the route the reference picks, for every request.
    #[test]
    fn fuzz_router_agrees_with_the_documented_precedence(
        routes in prop::collection::vec(a_route(), 1..24),
        requests in prop::collection::vec(a_request(), 1..16),
    ) {
        let mut b = RouterBuilder::default();
        for (i, r) in routes.iter().enumerate() {
            b.add_route(r, i).unwrap();
        }
        let router = b.build();
        for req in &requests {
            let mut header_map = HeaderMap::new();
            for (n, v) in &req.headers {
                header_map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            let got = router
                .route(&RequestInfo { method: &req.method, host: req.host.as_deref(), path: &req.path, headers: &header_map })
                .map(|m| (*m.target, m.strip_len));
            let want = reference(&routes, req, &header_map);
            prop_assert_eq!(got, want, "request {:?}", req);
        }
    }
}
