//! The developer portal on a real `tollgate dev`, as its users meet it:
//!
//! - in headless Chromium (Debian's `chromium` and `chromedriver`, driven by selenium from
//!   `tools/portal_browser.py`): a developer finds a service, creates an app and a key and
//!   asks for a subscription; a tenant admin approves it; the key then works through the
//!   edge within a second, through try-it and with curl. Every page is saved as a screenshot
//!   under `target/tmp/portal-screenshots/`.
//! - over plain HTTP, as an attacker would: another tenant's services, apps and keys stay
//!   out of reach, a form without its CSRF token is refused, and markup stored in a
//!   description is escaped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tollgate_integration_tests::dev::Dev;
use tollgate_integration_tests::edge::{send, Reply, Upstream};
use tollgate_integration_tests::{program, tool, wait_for, Proc};

const XSS: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

/// Two tenants: acme's `orders` (manual approval) is what the developer of acme wants;
/// globex has a tenant-only `ledger`, a `private` vault, a public `weather` whose description
/// is a stored-XSS payload, and an app with a key.
fn config(upstream: &str) -> String {
    format!(
        r#"
tenants: [{{name: acme}}, {{name: globex}}]
upstreams:
  - {{name: be, tenant: acme, targets: [{{url: "{upstream}"}}]}}
  - {{name: gbe, tenant: globex, targets: [{{url: "{upstream}"}}]}}
services:
  - {{name: orders, tenant: acme, version: v1, state: published, visibility: tenant, approval: manual, auth: [api_key], upstream: be, description: "Orders of the shop", routes: [{{paths: [/orders]}}]}}
  - {{name: ledger, tenant: globex, state: published, visibility: tenant, auth: [api_key], upstream: gbe, description: "Globex ledger", routes: [{{paths: [/ledger]}}]}}
  - {{name: vault, tenant: globex, state: published, visibility: private, auth: [api_key], upstream: gbe, routes: [{{paths: [/vault]}}]}}
  - {{name: weather, tenant: globex, state: published, visibility: public, auth: [api_key], upstream: gbe, description: "{xss}", routes: [{{paths: [/weather]}}]}}
apps: [{{name: gapp, tenant: globex}}]
"#,
        xss = XSS.replace('"', "\\\"")
    )
}

/// A `tollgate dev` in a directory of its own with [`config`] applied.
struct Portal {
    dir: tempfile::TempDir,
    dev: Dev,
    proc: Option<Proc>,
    _upstream: Upstream,
}

impl Portal {
    fn start() -> Portal {
        let dir = tempfile::tempdir().unwrap();
        let upstream = Upstream::start();
        let dev = Dev::new();
        let proc = dev.start(dir.path(), "dev.log");
        std::fs::write(dir.path().join("portal.yaml"), config(&upstream.url())).unwrap();
        dev.cli(dir.path(), &["apply", "-f", "portal.yaml"]).ok();
        let p = Portal {
            dir,
            dev,
            proc: Some(proc),
            _upstream: upstream,
        };
        p.cli(&["key", "create", "--app", "gapp", "--tenant", "globex"])
            .ok();
        p
    }

    fn cli(&self, args: &[&str]) -> tollgate_integration_tests::CliOutput {
        self.dev.cli(self.dir.path(), args)
    }

    /// A new token of `role` in `tenant`.
    fn token(&self, role: &str, tenant: &str) -> String {
        let out = self
            .cli(&[
                "token", "create", "--role", role, "--tenant", tenant, "-o", "json",
            ])
            .ok()
            .stdout;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    fn url(&self) -> String {
        format!("http://{}", self.dev.http)
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            if std::thread::panicking() {
                eprintln!(
                    "--- tollgate dev ---\n{}",
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
            p.kill();
        }
    }
}

/// Where the browser test leaves its screenshots (kept after the run, for CI artifacts).
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_developer_gets_a_key_an_admin_approves_and_the_key_works_in_a_real_browser() {
    let p = Portal::start();
    let developer = p.token("tenant-developer", "acme");
    let admin = p.token("tenant-admin", "acme");
    let shots = screenshots();
    let out = Command::new(program("python3", "install Python 3"))
        .arg(tool("portal_browser.py"))
        .args(["--portal", &p.url()])
        .args(["--gateway", &format!("http://{}", p.dev.listen)])
        .args(["--developer-token", &developer, "--admin-token", &admin])
        .args(["--tenant", "acme", "--service", "orders", "--app", "mobile"])
        .args(["--path", "/orders/42"])
        .arg("--shots")
        .arg(&shots)
        .output()
        .expect("running python3");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "pip install selenium, apt install chromium chromium-driver (.ci/run does): {stderr}"
    );
    assert!(
        out.status.success(),
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("the run's JSON line");
    eprintln!("browser run: {result}");
    assert_eq!(result["try_status"], 200, "{result}");
    assert!(
        result["approved_to_served_ms"].as_u64().unwrap() <= 1000,
        "{result}"
    );
    let key = result["key"].as_str().unwrap();

    // The key works with curl, and the edge forwards the request, not the key.
    let curl = Command::new(program("curl", "apt install curl"))
        .args(["-sS", "-H", &format!("apikey: {key}")])
        .arg(format!("http://{}/orders/7", p.dev.listen))
        .output()
        .expect("running curl");
    assert!(curl.status.success(), "{curl:?}");
    let echo: serde_json::Value = serde_json::from_slice(&curl.stdout).expect("the upstream's echo");
    assert_eq!(echo["path"], "/orders/7", "{echo}");
    assert!(
        !echo.to_string().contains(key),
        "the key reached the upstream: {echo}"
    );

    // The usage page showed exactly the run's calls: `tollgate stats` agrees, plus curl's.
    let shown = result["usage_requests"].as_u64().unwrap();
    wait_for("the curl call in the rollups", Duration::from_secs(10), || {
        let out = p
            .cli(&[
                "stats",
                "--tenant",
                "acme",
                "--service",
                "orders",
                "--by",
                "total",
                "-o",
                "json",
            ])
            .ok()
            .stdout;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let total = v["total"]["requests"].as_u64().unwrap();
        assert!(total <= shown + 1, "stats {total}, page {shown}");
        (total == shown + 1).then_some(())
    });

    // A screenshot of every step, each a PNG.
    let mut names: Vec<String> = std::fs::read_dir(&shots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for step in [
        "login-developer",
        "catalog",
        "service",
        "apps",
        "new-key",
        "subscription-pending",
        "approvals",
        "audit",
        "try-it",
    ] {
        let name = names
            .iter()
            .find(|n| n.ends_with(&format!("-{step}.png")))
            .unwrap_or_else(|| panic!("no screenshot of {step}: {names:?}"));
        let png = std::fs::read(shots.join(name)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "{name}");
    }
}

/// A cookie-keeping HTTP client of the portal, speaking raw HTTP/1.1.
struct Client {
    addr: std::net::SocketAddr,
    cookies: Vec<(String, String)>,
}

impl Client {
    fn new(p: &Portal) -> Client {
        Client {
            addr: p.dev.http,
            cookies: Vec::new(),
        }
    }

    fn request(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> Reply {
        let body = url_encode(form);
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        let r = send(self.addr, method, path, &headers, body.as_bytes()).expect("the portal answers");
        for (name, value) in &r.headers {
            if name != "set-cookie" {
                continue;
            }
            let pair = value.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies.retain(|(n, _)| n != k);
                if !v.is_empty() {
                    self.cookies.push((k.to_string(), v.to_string()));
                }
            }
        }
        r
    }

    fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[])
    }

    /// Logs in with `token`; the answer to the login form.
    fn login(&mut self, token: &str) -> Reply {
        let form = self.get("/portal/login");
        let csrf = csrf_of(&form.body);
        self.request("POST", "/portal/login", &[("csrf", &csrf), ("token", token)])
    }

    /// The session's CSRF token, from any page's forms.
    fn csrf(&mut self) -> String {
        csrf_of(&self.get("/portal/apps").body)
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

fn url_encode(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| {
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| match b {
                        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[test]
fn the_portal_refuses_cross_tenant_reads_forged_forms_and_escapes_stored_markup() {
    let p = Portal::start();
    let developer = p.token("tenant-developer", "acme");

    // Logging in: a bad token is refused; a good one gets an HttpOnly, SameSite=Strict session.
    let mut c = Client::new(&p);
    assert_eq!(c.login("tga_not-a-token").status, 401);
    let mut c = Client::new(&p);
    let r = c.login(&developer);
    assert_eq!(r.status, 303, "{r:?}");
    let session = r
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("tg_session="))
        .map(|(_, v)| v.clone())
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/portal"] {
        assert!(session.contains(attr), "{session}");
    }
    // A login form posted without its CSRF pair is refused.
    let mut forged = Client::new(&p);
    let r = forged.request("POST", "/portal/login", &[("token", &developer)]);
    assert_eq!(r.status, 401);
    assert!(!r
        .headers
        .iter()
        .any(|(n, v)| n == "set-cookie" && v.starts_with("tg_session=")));

    // The catalog: acme's own and globex's public service, never globex's tenant-only or
    // private one; their pages are not found, and neither is a subscription to them.
    let catalog = c.get("/portal");
    assert_eq!(catalog.status, 200);
    assert!(catalog.body.contains("/portal/services/acme/orders"));
    assert!(catalog.body.contains("/portal/services/globex/weather"));
    assert!(
        !catalog.body.contains("ledger") && !catalog.body.contains("vault"),
        "{}",
        catalog.body
    );
    for page in ["/portal/services/globex/ledger", "/portal/services/globex/vault"] {
        assert_eq!(c.get(page).status, 404, "{page}");
    }
    let csrf = c.csrf();
    c.request("POST", "/portal/apps", &[("csrf", &csrf), ("name", "mobile")]);
    let r = c.request(
        "POST",
        "/portal/services/globex/ledger/subscribe",
        &[("csrf", &csrf), ("app", "mobile")],
    );
    assert_eq!(r.status, 404);

    // Another tenant's apps and keys: not listed, and no key can be made for them.
    let apps = c.get("/portal/apps");
    assert!(
        apps.body.contains("app-mobile") && !apps.body.contains("gapp"),
        "{}",
        apps.body
    );
    let r = c.request("POST", "/portal/apps/globex/gapp/keys", &[("csrf", &csrf)]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.body.contains("tgk_"), "{}", r.body);
    let gkeys = p
        .cli(&["get", "api_key", "--tenant", "globex", "-o", "json"])
        .ok()
        .stdout;
    let gkeys: serde_json::Value = serde_json::from_str(&gkeys).unwrap();
    assert_eq!(count_with(&gkeys, "app", "gapp"), 1, "{gkeys}");

    // Forms without the session's CSRF token, or with another one, do nothing.
    for token in [None, Some("forged")] {
        let mut form = vec![("name", "sneaky")];
        if let Some(t) = token {
            form.push(("csrf", t));
        }
        let r = c.request("POST", "/portal/apps", &form);
        assert_eq!(r.status, 403, "{token:?}");
    }
    let apps = p.cli(&["get", "apps", "--tenant", "acme"]).ok().stdout;
    assert!(!apps.contains("sneaky"), "{apps}");

    // Stored markup is escaped wherever it shows, and no page may run script anyway.
    for page in ["/portal", "/portal/services/globex/weather"] {
        let r = c.get(page);
        assert!(
            !r.body.contains(XSS) && !r.body.contains("<script"),
            "{page}: {}",
            r.body
        );
        assert!(r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
        assert!(r
            .header("content-security-policy")
            .unwrap()
            .starts_with("default-src 'none'"));
    }
    let r = c.request(
        "POST",
        "/portal/apps",
        &[("csrf", &csrf), ("name", "web"), ("description", XSS)],
    );
    assert_eq!(r.status, 303);
    let apps = c.get("/portal/apps");
    assert!(!apps.body.contains(XSS) && apps.body.contains("&lt;img src=x onerror=alert(2)&gt;"));

    // A developer requests a subscription but cannot approve it; a key made in the portal
    // and revoked there is refused by the edge within a second.
    let r = c.request(
        "POST",
        "/portal/services/acme/orders/subscribe",
        &[("csrf", &csrf), ("app", "mobile")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = c.request(
        "POST",
        "/portal/subscriptions/acme/mobile%3Aorders/approve",
        &[("csrf", &csrf)],
    );
    assert_eq!(r.status, 403, "no self-approval: {}", r.body);
    p.cli(&["subscription", "approve", "mobile:orders", "--tenant", "acme"])
        .ok();
    let r = c.request("POST", "/portal/apps/acme/mobile/keys", &[("csrf", &csrf)]);
    let marker = "id=\"new-key\">";
    let at = r.body.find(marker).expect("the key, once") + marker.len();
    let key = r.body[at..].split('<').next().unwrap().to_string();
    let call = || {
        send(p.dev.listen, "GET", "/orders", &[("apikey", &key)], b"")
            .expect("the edge answers")
            .status
    };
    wait_for("the new key on the edge", Duration::from_secs(1), || {
        (call() == 200).then_some(())
    });
    let id = key.split('_').nth(1).unwrap();
    let r = c.request(
        "POST",
        &format!("/portal/keys/acme/{id}/revoke"),
        &[("csrf", &csrf)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    wait_for("the revoked key refused", Duration::from_secs(1), || {
        (call() == 401).then_some(())
    });

    // Try-it sends only to the service's own routes.
    let r = c.request(
        "POST",
        "/portal/services/acme/orders/try",
        &[("csrf", &csrf), ("method", "GET"), ("path", "/ledger")],
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // After logging out the session is gone.
    c.request("POST", "/portal/logout", &[("csrf", &csrf)]);
    c.cookies.push((
        "tg_session".into(),
        session.split(';').next().unwrap()["tg_session=".len()..].to_string(),
    ));
    let r = c.get("/portal/apps");
    assert_eq!((r.status, r.header("location")), (303, Some("/portal/login")));
}

/// How many objects in `v` (at any depth) have `field` equal to `value`.
fn count_with(v: &serde_json::Value, field: &str, value: &str) -> usize {
    match v {
        serde_json::Value::Object(m) => {
            usize::from(m.get(field).and_then(|x| x.as_str()) == Some(value))
                + m.values().map(|x| count_with(x, field, value)).sum::<usize>()
        }
        serde_json::Value::Array(a) => a.iter().map(|x| count_with(x, field, value)).sum(),
        _ => 0,
    }
}

const PETS: &str = r#"
openapi: 3.0.3
info:
  title: Pet Store
  version: "1.0.0"
  description: "Pets, <b>bold</b> claims"
servers: [{url: "https://pets.example.com/api"}]
tags: [{name: animals}]
paths:
  /pets:
    get: {summary: "List the pets <script>alert(3)</script>"}
    post: {summary: Add a pet}
  /pets/{id}:
    get: {summary: One pet}
"#;

/// Governance end to end: `tollgate import openapi` makes a draft whose routes come from the
/// document, the tenant's publishing rules refuse a service without an owner (in the CLI and
/// in the portal's lifecycle form), the attached document is the docs (escaped), and the
/// lifecycle moves made in the portal reach the edge: published routes serve by the
/// document's methods, retired ones are refused.
#[test]
fn openapi_import_publishing_rules_and_the_lifecycle_reach_the_edge() {
    let p = Portal::start();
    std::fs::write(p.dir.path().join("pets.yaml"), PETS).unwrap();
    let out = p
        .cli(&[
            "import",
            "openapi",
            "pets.yaml",
            "--tenant",
            "acme",
            "--upstream",
            "be",
        ])
        .ok()
        .stdout;
    assert!(out.contains("acme/pet-store (draft) with 2 routes"), "{out}");
    let doc = p
        .cli(&["get", "openapi", "pet-store", "--tenant", "acme"])
        .ok()
        .stdout;
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["info"]["title"], "Pet Store",
        "the attached document is returned"
    );

    // acme publishes only services with docs and an owner; the import had no contact.
    std::fs::write(
        p.dir.path().join("rules.yaml"),
        "tenants: [{name: acme, publish_requires: [docs, owner]}]\n",
    )
    .unwrap();
    p.cli(&["apply", "-f", "rules.yaml"]).ok();
    let admin = p.token("tenant-admin", "acme");
    let mut c = Client::new(&p);
    assert_eq!(c.login(&admin).status, 303);
    let page = c.get("/portal/services/acme/pet-store");
    assert!(page.body.contains("id=\"lifecycle\"") && page.body.contains("id=\"to-published\""));
    assert!(!page.body.contains("<script>alert(3)"), "OpenAPI text is escaped");
    assert!(page
        .body
        .contains("List the pets &lt;script&gt;alert(3)&lt;/script&gt;"));
    let csrf = csrf_of(&page.body);
    let publish = [("csrf", csrf.as_str()), ("state", "published")];
    let r = c.request("POST", "/portal/services/acme/pet-store/state", &publish);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("publishes only services with an owner"),
        "{}",
        r.body
    );

    // With an owner (the document's contact), publishing goes through.
    let owned = PETS.replace(
        "  version: \"1.0.0\"\n",
        "  version: \"1.0.0\"\n  contact: {email: pets@example.com}\n",
    );
    std::fs::write(p.dir.path().join("pets2.yaml"), owned).unwrap();
    p.cli(&[
        "import",
        "openapi",
        "pets2.yaml",
        "--tenant",
        "acme",
        "--upstream",
        "be",
    ])
    .ok();
    let r = c.request("POST", "/portal/services/acme/pet-store/state", &publish);
    assert_eq!(r.status, 303, "{}", r.body);
    let page = c.get("/portal/services/acme/pet-store");
    assert!(page.body.contains("<span id=\"owner\">pets@example.com</span>"));
    assert!(page.body.contains("/portal?tag=animals"));

    // The edge serves the document's operations and nothing else.
    std::fs::write(
        p.dir.path().join("app.yaml"),
        "apps: [{name: petapp, tenant: acme}]\nsubscriptions: [{app: petapp, service: pet-store, tenant: acme}]\n",
    )
    .unwrap();
    p.cli(&["apply", "-f", "app.yaml"]).ok();
    let key = p
        .cli(&[
            "key", "create", "--app", "petapp", "--tenant", "acme", "-o", "json",
        ])
        .ok()
        .stdout;
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    let call = |method: &str, path: &str| {
        send(p.dev.listen, method, path, &[("apikey", &key)], b"").expect("the edge answers")
    };
    wait_for("the published routes", Duration::from_secs(2), || {
        (call("GET", "/api/pets/7").status == 200).then_some(())
    });
    assert_eq!(call("POST", "/api/pets").status, 200);
    assert_eq!(call("DELETE", "/api/pets/7").status, 404, "not in the document");
    assert_eq!(call("GET", "/api/pets/7/toys").status, 404);

    // Deprecated with a sunset, then retired: refused on the edge within a second.
    let r = c.request(
        "POST",
        "/portal/services/acme/pet-store/state",
        &[
            ("csrf", &csrf),
            ("state", "deprecated"),
            ("sunset", "2027-06-30T00:00:00Z"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = wait_for("the sunset header", Duration::from_secs(1), || {
        let r = call("GET", "/api/pets");
        r.header("sunset").is_some().then_some(r)
    });
    assert_eq!(r.header("sunset"), Some("Wed, 30 Jun 2027 00:00:00 GMT"));
    let catalog = c.get("/portal");
    assert!(
        catalog.body.contains("sunset 2027-06-30T00:00:00Z"),
        "deprecated services show their sunset"
    );
    let r = c.request(
        "POST",
        "/portal/services/acme/pet-store/state",
        &[("csrf", &csrf), ("state", "retired")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = wait_for("the retirement", Duration::from_secs(1), || {
        let r = call("GET", "/api/pets");
        (r.status == 403).then_some(r)
    });
    assert_eq!(r.error_code(), "api_retired");
}
