//! `tollgate dev` and the README's five-minute tour, as a user runs them: the dev process in
//! a directory, the CLI in the same directory without `--token` (it finds
//! `./tollgate-data/admin.token`), the tour file from `deploy/examples/`. Each test starts
//! its own dev process ([`Tour::start`]) and shows one behaviour:
//!
//! - dev prints the proxy URL and the bootstrap token, which it keeps owner-only;
//! - the tour runs: `diff`, `apply`, a key, calls through the edge, `cluster status`;
//! - dev stops cleanly and a restart keeps the config, the keys and the token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_integration_tests::dev::Dev;
use tollgate_integration_tests::edge::{send, Reply, Upstream};
use tollgate_integration_tests::{wait_for, Proc};

/// A directory with the README's tour file (its upstream pointed at a test upstream) and a
/// `tollgate dev` started in it, ready (`/readyz`). Each test starts its own.
struct Tour {
    dir: tempfile::TempDir,
    dev: Dev,
    /// The tour's upstream; held so it keeps answering.
    _upstream: Upstream,
}

impl Tour {
    /// The tour and the dev process (for the test to stop).
    fn start() -> (Tour, Proc) {
        let dir = tempfile::tempdir().unwrap();
        let upstream = Upstream::start();
        let tour = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/tour.yaml"
        ))
        .expect("the README's tour file");
        assert!(tour.contains("http://127.0.0.1:9001"));
        std::fs::write(
            dir.path().join("tour.yaml"),
            tour.replace("http://127.0.0.1:9001", &upstream.url()),
        )
        .unwrap();
        let dev = Dev::new();
        let proc = dev.start(dir.path(), "dev.log");
        let tour = Tour {
            dir,
            dev,
            _upstream: upstream,
        };
        (tour, proc)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn token_file(&self) -> PathBuf {
        self.dir().join("tollgate-data/admin.token")
    }

    /// The CLI in the tour's directory, without `--token`.
    fn cli(&self, args: &[&str]) -> tollgate_integration_tests::CliOutput {
        self.dev.cli(self.dir(), args)
    }

    /// `GET path` through the dev edge, with `key` as `apikey` if given.
    fn call(&self, path: &str, key: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("apikey", k)]).unwrap_or_default();
        send(self.dev.listen, "GET", path, &headers, b"").expect("the edge answers")
    }

    /// The tour's last steps: apply the file, create a key for app `mobile`, and wait
    /// (bounded) until the edge serves `/hello/` with it. The key and that answer.
    fn apply_and_call(&self) -> (String, Reply) {
        self.cli(&["apply", "-f", "tour.yaml"]).ok();
        let key = self
            .cli(&[
                "key", "create", "--app", "mobile", "--tenant", "acme", "-o", "json",
            ])
            .ok()
            .stdout;
        let key: serde_json::Value = serde_json::from_str(&key).unwrap();
        let key = key["key"].as_str().unwrap().to_string();
        let served = wait_for("the tour's route on the edge", Duration::from_secs(5), || {
            let r = self.call("/hello/", Some(&key));
            (r.status == 200).then_some(r)
        });
        (key, served)
    }
}

/// The bootstrap token: printed, and written to `./tollgate-data/admin.token`, mode 0600;
/// dev also prints the proxy URL.
#[test]
fn dev_prints_the_proxy_url_and_the_admin_token_it_keeps_owner_only() {
    let (tour, proc) = Tour::start();
    let token_file = tour.token_file();
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
    let printed = std::fs::read_to_string(tour.dir().join("dev.log")).unwrap();
    assert!(printed.contains(&token), "dev prints the admin token");
    assert!(
        printed.contains(&format!("http://{}", tour.dev.listen)),
        "dev prints the proxy URL: {printed}"
    );
    assert!(
        proc.terminate(Duration::from_secs(15)),
        "dev did not exit cleanly"
    );
}

/// The tour as the README runs it, with the CLI finding the token by itself: `diff` shows
/// what `apply` creates, the key opens `/hello/` (prefix stripped, a request id added),
/// no key or an unknown path is refused, and `cluster status` shows the dev edge caught up.
#[test]
fn the_readme_tour_runs_with_the_cli_finding_the_token_by_itself() {
    let (tour, proc) = Tour::start();
    let diff = tour.cli(&["diff", "-f", "tour.yaml"]).ok().stdout;
    assert!(diff.contains("5 created"), "{diff}");
    let (key, served) = tour.apply_and_call();
    let services = tour.cli(&["get", "services"]).ok().stdout;
    assert!(services.contains("hello"), "{services}");
    assert_eq!(
        served.json()["path"],
        "/",
        "strip_prefix: /hello/ reaches the upstream as /"
    );
    assert!(served.header("x-request-id").is_some());
    let r = tour.call("/hello/", None);
    assert_eq!((r.status, r.error_code().as_str()), (401, "missing_credential"));
    let r = tour.call("/nowhere", Some(&key));
    assert_eq!((r.status, r.error_code().as_str()), (404, "no_route"));
    let status = tour.cli(&["cluster", "status", "-o", "json"]).ok().stdout;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["edges"][0]["node_id"], "dev-edge", "{status}");
    assert_eq!(status["edges"][0]["lag"], 0, "{status}");
    assert!(
        proc.terminate(Duration::from_secs(15)),
        "dev did not exit cleanly"
    );
}

/// Ctrl-C (here SIGTERM) stops dev cleanly; a restart in the same directory keeps the
/// config, the keys and the token: the key still opens `/hello/` and applying the tour
/// again changes nothing.
#[test]
fn dev_stops_cleanly_and_a_restart_keeps_config_keys_and_the_token() {
    let (tour, proc) = Tour::start();
    let token = std::fs::read_to_string(tour.token_file()).unwrap();
    let (key, _) = tour.apply_and_call();
    assert!(
        proc.terminate(Duration::from_secs(15)),
        "dev did not exit cleanly"
    );

    let proc = tour.dev.start(tour.dir(), "dev2.log");
    assert_eq!(
        std::fs::read_to_string(tour.token_file()).unwrap().trim(),
        token.trim()
    );
    let r = tour.call("/hello/", Some(&key));
    assert_eq!(r.status, 200, "{r:?}");
    let again = tour.cli(&["apply", "-f", "tour.yaml"]).ok().stdout;
    assert!(again.contains("5 unchanged"), "{again}");
    assert!(
        proc.terminate(Duration::from_secs(15)),
        "dev did not exit cleanly after the restart"
    );
}
