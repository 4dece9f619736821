//! Route matching against 10k routes (issue: "matching 10k routes stays in microseconds").
//!
//! Run: `cargo bench -p tollgate-edge --bench router -- --warm-up-time 1 --measurement-time 3`
//!
//! Tables, each compiled once (as the edge compiles a config, off the request path):
//! - `mixed_10k`: 10,000 routes, one per service `i`: 80% prefix (`/p{i}/api`), 10% exact
//!   (`=/e{i}/status`), 10% regex (`~^/r{i}/items/[0-9]+$`, 1,000 regexes); a third with
//!   no host, a third with an exact host (`api{i}.example.com`), a third with a wildcard
//!   (`*.t{i}.example.com`); half restricted to GET/POST. Requests carry a `Host` with port.
//! - `same_path_10k_hosts`: 10,000 routes on the same prefix `/api`, one exact host each (one
//!   path, many virtual hosts: the candidates of one path are scanned for the best host).
//! - `regex_only_10k`: 10,000 regex routes (the worst case: one regex set of 10,000).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use tollgate_edge::bench_support::BenchRouter;
use tollgate_proto::model::Route;

const N: usize = 10_000;

fn route(paths: Vec<String>, hosts: Vec<String>, methods: &[&str]) -> Route {
    Route {
        paths,
        hosts,
        methods: methods.iter().map(|m| m.to_string()).collect(),
        ..Route::default()
    }
}

fn mixed(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| {
            let path = match i % 10 {
                0 => format!("~^/r{i}/items/[0-9]+$"),
                1 => format!("=/e{i}/status"),
                _ => format!("/p{i}/api"),
            };
            let hosts = match i % 3 {
                0 => vec![],
                1 => vec![format!("api{i}.example.com")],
                _ => vec![format!("*.t{i}.example.com")],
            };
            let methods: &[&str] = if i % 2 == 0 { &["GET", "POST"] } else { &[] };
            route(vec![path], hosts, methods)
        })
        .collect()
}

fn same_path_hosts(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| route(vec!["/api".into()], vec![format!("tenant{i}.example.com")], &[]))
        .collect()
}

fn regex_only(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| route(vec![format!("~^/r{i}/items/[0-9]+$")], vec![], &[]))
        .collect()
}

struct Case {
    name: &'static str,
    host: &'static str,
    path: String,
    expect: Option<usize>,
}

fn bench_table(c: &mut Criterion, group: &str, routes: Vec<Route>, cases: Vec<Case>) {
    let router = BenchRouter::build(&routes).expect("the generated routes compile");
    let headers = HeaderMap::new();
    let get = Method::GET;
    let mut g = c.benchmark_group(group);
    for case in &cases {
        // Check the case means what its name says before timing it.
        assert_eq!(
            router.route(&get, Some(case.host), &case.path, &headers),
            case.expect,
            "{group}/{}",
            case.name
        );
        g.bench_with_input(BenchmarkId::from_parameter(case.name), case, |b, case| {
            b.iter(|| {
                router.route(
                    black_box(&get),
                    black_box(Some(case.host)),
                    black_box(&case.path),
                    black_box(&headers),
                )
            })
        });
    }
    g.finish();
}

fn router(c: &mut Criterion) {
    // Indexes near the end of the table, of the wanted kind (i % 10) and host kind (i % 3).
    let prefix_exact_host = 9_994; // % 10 = 4 (prefix), % 3 = 1 (api9994.example.com)
    let prefix_wildcard = 9_995; // % 10 = 5 (prefix), % 3 = 2 (*.t9995.example.com)
    let exact = 9_991; // % 10 = 1 (exact), % 3 = 1 (api9991.example.com)
    let regex = 9_990; // % 10 = 0 (regex), % 3 = 0 (any host), GET/POST
    bench_table(
        c,
        "mixed_10k",
        mixed(N),
        vec![
            Case {
                name: "prefix_exact_host",
                host: "api9994.example.com:8080",
                path: format!("/p{prefix_exact_host}/api/orders/42"),
                expect: Some(prefix_exact_host),
            },
            Case {
                name: "prefix_wildcard_host",
                host: "eu.t9995.example.com",
                path: format!("/p{prefix_wildcard}/api/orders/42"),
                expect: Some(prefix_wildcard),
            },
            Case {
                name: "exact",
                host: "API9991.example.com:443",
                path: format!("/e{exact}/status"),
                expect: Some(exact),
            },
            Case {
                name: "regex_near_end",
                host: "www.example.com",
                path: format!("/r{regex}/items/123"),
                expect: Some(regex),
            },
            Case {
                name: "miss",
                host: "www.example.com",
                path: "/nowhere/at/all".into(),
                expect: None,
            },
            Case {
                name: "wrong_host",
                host: "api1.example.com",
                path: format!("/p{prefix_exact_host}/api"),
                expect: None,
            },
        ],
    );
    bench_table(
        c,
        "same_path_10k_hosts",
        same_path_hosts(N),
        vec![
            Case {
                name: "last_host",
                host: "tenant9999.example.com:8080",
                path: "/api/orders/42".into(),
                expect: Some(N - 1),
            },
            Case {
                name: "unknown_host",
                host: "other.example.com",
                path: "/api/orders/42".into(),
                expect: None,
            },
        ],
    );
    bench_table(
        c,
        "regex_only_10k",
        regex_only(N),
        vec![
            Case {
                name: "last_regex",
                host: "www.example.com",
                path: format!("/r{}/items/7", N - 1),
                expect: Some(N - 1),
            },
            Case {
                name: "miss",
                host: "www.example.com",
                path: "/nowhere".into(),
                expect: None,
            },
        ],
    );
}

criterion_group!(benches, router);
criterion_main!(benches);
