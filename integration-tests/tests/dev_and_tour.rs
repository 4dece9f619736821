//! `tollgate dev` and the README's five-minute tour, as a user runs them: the dev process in
//! a directory, the CLI in the same directory without `--token` (it finds
//! `./tollgate-data/admin.token`), the tour file from `deploy/examples/`, calls through the
//! edge, then a restart that keeps everything.

use std::path::Path;
use std::time::Duration;

use tollgate_integration_tests::edge::{send, Upstream};
use tollgate_integration_tests::{free_port, http_get, loopback, run_cli, wait_for, Proc};

struct Dev {
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    peer: std::net::SocketAddr,
}

impl Dev {
    fn new() -> Dev {
        let p = || loopback(free_port());
        Dev {
            grpc: p(),
            http: p(),
            listen: p(),
            admin: p(),
            peer: p(),
        }
    }

    fn start(&self, dir: &Path, log: &str) -> Proc {
        let args: Vec<String> = [
            "dev",
            "--grpc",
            &self.grpc.to_string(),
            "--http",
            &self.http.to_string(),
            "--listen",
            &self.listen.to_string(),
            "--admin",
            &self.admin.to_string(),
            "--peer",
            &self.peer.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc::spawn_in("tollgate dev", &args, dir.join(log), dir);
        let admin = self.admin;
        wait_for("the dev edge to be ready", Duration::from_secs(30), || {
            http_get(admin, "/readyz").filter(|(s, _)| *s == 200)
        });
        proc
    }

    fn cli(&self, dir: &Path, args: &[&str]) -> tollgate_integration_tests::CliOutput {
        run_cli(dir, &format!("http://{}", self.grpc), None, args, None)
    }
}

#[test]
fn dev_runs_the_readme_tour_and_keeps_state_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let upstream = Upstream::start();
    let tour = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/tour.yaml"
    ))
    .expect("the README's tour file");
    assert!(tour.contains("http://127.0.0.1:9001"));
    std::fs::write(
        dir.join("tour.yaml"),
        tour.replace("http://127.0.0.1:9001", &upstream.url()),
    )
    .unwrap();

    let dev = Dev::new();
    let proc = dev.start(dir, "dev.log");

    // The bootstrap token: printed, and written to ./tollgate-data/admin.token, mode 0600.
    let token_file = dir.join("tollgate-data/admin.token");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(token.starts_with("tga_"), "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let printed = std::fs::read_to_string(dir.join("dev.log")).unwrap();
    assert!(printed.contains(&token), "dev prints the admin token");
    assert!(
        printed.contains(&format!("http://{}", dev.listen)),
        "dev prints the proxy URL: {printed}"
    );

    // The tour, with the CLI finding the token by itself.
    let diff = dev.cli(dir, &["diff", "-f", "tour.yaml"]).ok().stdout;
    assert!(diff.contains("5 created"), "{diff}");
    dev.cli(dir, &["apply", "-f", "tour.yaml"]).ok();
    let services = dev.cli(dir, &["get", "services"]).ok().stdout;
    assert!(services.contains("hello"), "{services}");
    let key = dev
        .cli(
            dir,
            &[
                "key", "create", "--app", "mobile", "--tenant", "acme", "-o", "json",
            ],
        )
        .ok()
        .stdout;
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    let key = key["key"].as_str().unwrap().to_string();

    let call = |path: &str, key: Option<&str>| {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("apikey", k)]).unwrap_or_default();
        send(dev.listen, "GET", path, &headers, b"").expect("the edge answers")
    };
    let served = wait_for("the tour's route on the edge", Duration::from_secs(5), || {
        let r = call("/hello/", Some(&key));
        (r.status == 200).then_some(r)
    });
    assert_eq!(
        served.json()["path"],
        "/",
        "strip_prefix: /hello/ reaches the upstream as /"
    );
    assert!(served.header("x-request-id").is_some());
    let r = call("/hello/", None);
    assert_eq!((r.status, r.error_code().as_str()), (401, "missing_credential"));
    let r = call("/nowhere", Some(&key));
    assert_eq!((r.status, r.error_code().as_str()), (404, "no_route"));
    let status = dev.cli(dir, &["cluster", "status", "-o", "json"]).ok().stdout;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["edges"][0]["node_id"], "dev-edge", "{status}");
    assert_eq!(status["edges"][0]["lag"], 0, "{status}");

    // Ctrl-C (here SIGTERM) stops it cleanly; a restart keeps config, keys and the token.
    assert!(
        proc.terminate(Duration::from_secs(15)),
        "dev did not exit cleanly"
    );
    let proc = dev.start(dir, "dev2.log");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    let r = call("/hello/", Some(&key));
    assert_eq!(r.status, 200, "{r:?}");
    let again = dev.cli(dir, &["apply", "-f", "tour.yaml"]).ok().stdout;
    assert!(again.contains("5 unchanged"), "{again}");
    assert!(proc.terminate(Duration::from_secs(15)));
}
