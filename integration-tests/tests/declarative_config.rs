//! The declarative file through the real CLI against a real control plane: every kind of bad
//! input is refused with a message naming the resource and field, nothing of a refused apply
//! is written, and apply/diff/export/delete behave as documented.

use tollgate_integration_tests::Sandbox;

const GOOD: &str = r#"
tenants: [{name: acme}]
upstreams: [{name: orders-be, tenant: acme, targets: [{url: "http://127.0.0.1:9001", weight: 2}],
             health: {path: /healthz, interval: 5s}, timeouts: {connect: 2s, request: 30s}}]
services: [{name: orders, tenant: acme, version: v1, approval: manual, auth: [api_key], upstream: orders-be,
            routes: [{paths: ["/orders", "=/orders/count", "~^/orders/[0-9]+$"], methods: [GET, POST]}]}]
policies: [{name: office, tenant: acme, ip_filter: {allow: ["10.0.0.0/8", "2001:db8::/32"]}}]
apps: [{name: mobile, tenant: acme}]
subscriptions: [{app: mobile, service: orders, tenant: acme}]
"#;

fn export(sb: &Sandbox) -> String {
    sb.cli(0, &["export", "-o", "json"]).ok().stdout
}

#[test]
fn bad_input_is_refused_clearly_and_writes_nothing() {
    let sb = Sandbox::cluster(1);
    sb.cli(0, &["apply", "-f", &sb.file("good.yaml", GOOD)]).ok();
    let before = export(&sb);

    // Each case: a document that also contains a valid new app (which must not be written),
    // and the one-line reason expected on stderr.
    let cases: &[(&str, &str, &str)] = &[
        ("malformed", "apps: [{name: extra, tenant: acme}\nservices: [", "malformed document"),
        ("unknown field", "apps: [{name: extra, tenant: acme}, {name: x, tenant: acme, colour: red}]", "unknown field `colour`"),
        ("unknown list", "apps: [{name: extra, tenant: acme}]\nroutes: []", "unknown field `routes`"),
        (
            "dangling reference",
            "apps: [{name: extra, tenant: acme}]\nservices: [{name: s2, tenant: acme, upstream: nope, routes: [{paths: [/s2]}]}]",
            "error: service acme/s2: upstream: references upstream acme/nope, which does not exist",
        ),
        (
            "bad cidr",
            "apps: [{name: extra, tenant: acme}]\npolicies: [{name: p, tenant: acme, ip_filter: {deny: ['10.1.2.0/40']}}]",
            "error: policy acme/p: ip_filter.deny[0]: invalid CIDR \"10.1.2.0/40\"",
        ),
        (
            "bad regex",
            "apps: [{name: extra, tenant: acme}]\nservices: [{name: s3, tenant: acme, upstream: orders-be, routes: [{paths: ['~^/(a']}]}]",
            "error: service acme/s3: routes[0].paths[0]: invalid regex \"~^/(a\"",
        ),
        (
            "duplicate names",
            "apps: [{name: extra, tenant: acme}, {name: extra, tenant: acme}]",
            "error: app acme/extra: named twice in apps",
        ),
        (
            "bad duration",
            "apps: [{name: extra, tenant: acme}]\nupstreams: [{name: u2, tenant: acme, targets: [{url: 'http://127.0.0.1:1'}], timeouts: {connect: soon}}]",
            "invalid duration \"soon\"",
        ),
        (
            "bad url",
            "apps: [{name: extra, tenant: acme}]\nupstreams: [{name: u3, tenant: acme, targets: [{url: 'ftp://example.com'}]}]",
            "error: upstream acme/u3: targets[0].url: invalid URL \"ftp://example.com\": scheme must be http or https",
        ),
        (
            "metadata address",
            "apps: [{name: extra, tenant: acme}]\nupstreams: [{name: u4, tenant: acme, targets: [{url: 'http://169.254.169.254/latest'}]}]",
            "points at a link-local or metadata address",
        ),
        (
            "unknown tenant",
            "apps: [{name: extra, tenant: acme}, {name: y, tenant: nowhere}]",
            "error: app nowhere/y: tenant: references tenant nowhere, which does not exist",
        ),
        ("bad name", "apps: [{name: extra, tenant: acme}, {name: 'has space', tenant: acme}]", "invalid name \"has space\""),
        ("empty", "", "document is empty"),
    ];
    for (what, doc, want) in cases {
        let file = sb.file(&format!("bad-{}.yaml", what.replace(' ', "-")), doc);
        let out = sb.cli(0, &["apply", "-f", &file]);
        assert_eq!(out.code, 1, "{what}: expected failure, got {out:?}");
        assert!(
            out.stderr.contains(want),
            "{what}: want {want:?} in stderr:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.lines().all(|l| l.starts_with("error: ")),
            "{what}: every line is one reason: {}",
            out.stderr
        );
        assert_eq!(export(&sb), before, "{what}: a refused apply changed the config");
        // diff refuses it the same way
        let out = sb.cli(0, &["diff", "-f", &file]);
        assert_eq!(out.code, 1, "{what}: diff should refuse too: {out:?}");
    }
}

#[test]
fn apply_diff_export_get_delete_round_trip() {
    let sb = Sandbox::cluster(1);
    let good = sb.file("good.yaml", GOOD);

    let diff = sb.cli(0, &["diff", "-f", &good]).ok().stdout;
    assert!(diff.contains("+ service acme/orders (created)"), "{diff}");
    assert!(diff.contains("6 created"), "{diff}");
    assert_eq!(export(&sb).trim(), "{}", "diff must not write");

    let first = sb.cli(0, &["apply", "-f", &good]).ok().stdout;
    assert!(
        first.contains("6 created, 0 updated, 0 deleted, 0 unchanged"),
        "{first}"
    );
    let again = sb.cli(0, &["apply", "-f", &good]).ok().stdout;
    assert!(
        again.contains("0 created, 0 updated, 0 deleted, 6 unchanged"),
        "apply is idempotent: {again}"
    );

    // The export applies back to the same config: nothing changes.
    let exported = sb.cli(0, &["export"]).ok().stdout;
    assert!(exported.contains("name: orders"), "{exported}");
    let back = sb
        .cli(0, &["apply", "-f", &sb.file("exported.yaml", &exported)])
        .ok()
        .stdout;
    assert!(back.contains("6 unchanged"), "{back}");
    // Manual approval: the subscription starts pending, and keeps its status on re-apply.
    let sub = sb
        .cli(
            0,
            &[
                "get",
                "subscription",
                "mobile:orders",
                "--tenant",
                "acme",
                "-o",
                "json",
            ],
        )
        .ok()
        .stdout;
    let sub: serde_json::Value = serde_json::from_str(&sub).unwrap();
    assert_eq!(sub["spec"]["status"], "pending");

    // A change shows as a diff of the resource.
    let changed = GOOD.replace("weight: 2", "weight: 5");
    let changed = sb.file("changed.yaml", &changed);
    let diff = sb.cli(0, &["diff", "-f", &changed]).ok().stdout;
    assert!(diff.contains("~ upstream acme/orders-be (updated)"), "{diff}");
    assert!(diff.contains("-   weight: 2\n    +   weight: 5"), "{diff}");
    let code = sb.cli(0, &["diff", "--exit-code", "-f", &changed]).code;
    assert_eq!(code, 1, "--exit-code reports differences");

    // Optimistic concurrency: a stale resource_version is refused with exit code 5.
    let got = sb
        .cli(0, &["get", "app", "mobile", "--tenant", "acme", "-o", "json"])
        .ok()
        .stdout;
    let version = serde_json::from_str::<serde_json::Value>(&got).unwrap()["version"]
        .as_u64()
        .unwrap();
    let stale = format!(
        "apps: [{{name: mobile, tenant: acme, description: x, resource_version: {}}}]",
        version + 100
    );
    let out = sb.cli(0, &["apply", "-f", &sb.file("stale.yaml", &stale)]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr.contains("does not match the stored version"),
        "{out:?}"
    );
    let fresh =
        format!("apps: [{{name: mobile, tenant: acme, description: x, resource_version: {version}}}]");
    sb.cli(0, &["apply", "-f", &sb.file("fresh.yaml", &fresh)]).ok();

    // Deleting what is still referenced is refused; deleting the referrer first works.
    let out = sb.cli(0, &["delete", "upstream", "orders-be", "--tenant", "acme"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "service acme/orders: upstream: references upstream acme/orders-be, which this change deletes"
        ),
        "{out:?}"
    );
    let out = sb.cli(0, &["delete", "app", "ghost", "--tenant", "acme"]);
    assert_eq!(out.code, 4, "not found: {out:?}");

    // Prune removes, within the file's tenants, what the file no longer names.
    let smaller = "tenants: [{name: acme}]\nupstreams: [{name: orders-be, tenant: acme, targets: [{url: 'http://127.0.0.1:9001'}]}]";
    let out = sb
        .cli(0, &["apply", "--prune", "-f", &sb.file("smaller.yaml", smaller)])
        .ok()
        .stdout;
    assert!(out.contains("4 deleted"), "{out}");
    let listed = sb.cli(0, &["get", "services", "-o", "json"]).ok().stdout;
    assert_eq!(listed.trim(), "[]");
    // JSON documents are accepted too.
    sb.cli(
        0,
        &[
            "apply",
            "-f",
            &sb.file("doc.json", r#"{"apps": [{"name": "web", "tenant": "acme"}]}"#),
        ],
    )
    .ok();
    let table = sb.cli(0, &["get", "app"]).ok().stdout;
    assert!(table.starts_with("KIND") && table.contains("web"), "{table}");
}
