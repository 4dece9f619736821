//! Network namespaces the test makes itself, for partitions between real processes.
//!
//! ```text
//!   root namespace (the test: its clients and the upstream, on 10.213.0.1)
//!        │ bridge tgchaos0
//!        ├── veth ── namespace tgc-cp1   10.213.0.11   (one process each)
//!        ├── veth ── namespace tgc-cp2   10.213.0.12
//!        └── ...
//! ```
//!
//! Each host's namespace holds an nftables table `inet chaos` with an input and an output
//! chain; a partition adds drop rules by address in both directions, and healing flushes
//! them. Dropped (not refused) packets, as on a real network: connections hang until their
//! timeouts. Traffic stays on the bridge, which has no route out.
//!
//! Needs root (CAP_NET_ADMIN), `ip` (iproute2) and `nft` (nftables; `.ci/run` installs it).
//! Everything is removed when the [`Net`] drops, and leftovers of an earlier, killed run
//! are removed when the next one starts. Tests of one binary take turns.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Mutex;

const BRIDGE: &str = "tgchaos0";
const PREFIX: &str = "tgc-";
/// The bridge's subnet; `.1` is the root namespace.
const SUBNET: [u8; 3] = [10, 213, 0];

/// Runs a command; panics with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("running {program}: {e} (needs iproute2 and nftables; .ci/run installs them)")
    });
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Like [`run`], ignoring failure (cleanup of what may not exist).
fn try_run(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// One host: a namespace and its address on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// One [`Net`] at a time in a test binary: they share the bridge's name and subnet.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The bridge and the hosts on it.
pub struct Net {
    hosts: Mutex<Vec<Host>>,
    /// Released after `drop` has removed everything.
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Net {
    /// The root namespace's address on the bridge (where the test's own servers listen).
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1);

    /// Creates the bridge, after removing whatever an earlier run left behind.
    pub fn create() -> Net {
        // A test that panicked while holding its turn has still cleaned up (drop runs).
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        Self::remove_leftovers();
        let gateway = format!("{}/24", Self::GATEWAY);
        run("ip", &["link", "add", BRIDGE, "type", "bridge"]);
        run("ip", &["addr", "add", &gateway, "dev", BRIDGE]);
        run("ip", &["link", "set", BRIDGE, "up"]);
        Net {
            hosts: Mutex::new(Vec::new()),
            _turn: turn,
        }
    }

    fn remove_leftovers() {
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let ns = line.split_whitespace().next().unwrap_or_default();
                if ns.starts_with(PREFIX) {
                    try_run("ip", &["netns", "del", ns]);
                }
            }
        }
        try_run("ip", &["link", "del", BRIDGE]);
    }

    /// A new host `name` (at most 11 characters): its namespace, a veth pair onto the
    /// bridge, the next address, loopback up, and the empty chaos table.
    pub fn host(&self, name: &str) -> Host {
        assert!(
            name.len() <= 11,
            "host name {name:?} too long for an interface name"
        );
        let mut hosts = self.hosts.lock().unwrap();
        let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + hosts.len() as u8 + 1);
        let ns = format!("{PREFIX}{name}");
        run("ip", &["netns", "add", &ns]);
        run(
            "ip",
            &[
                "link", "add", &ns, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        run("ip", &["link", "set", &ns, "master", BRIDGE, "up"]);
        let addr = format!("{ip}/24");
        run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        let nft = |rule: &str| run("ip", &["netns", "exec", &ns, "nft", rule]);
        nft("add table inet chaos");
        nft("add chain inet chaos input { type filter hook input priority 0; policy accept; }");
        nft("add chain inet chaos output { type filter hook output priority 0; policy accept; }");
        let host = Host {
            name: name.to_string(),
            ns,
            ip,
        };
        hosts.push(host.clone());
        host
    }

    fn find(&self, name: &str) -> Host {
        let hosts = self.hosts.lock().unwrap();
        hosts
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Drops every packet between each host of `a` and each of `b`, both ways. The test's
    /// root namespace (its clients) still reaches everyone.
    pub fn cut(&self, a: &[&str], b: &[&str]) {
        for (from, to) in [(a, b), (b, a)] {
            for x in from {
                let x = self.find(x);
                for y in to {
                    let y = self.find(y).ip.to_string();
                    for rule in [
                        format!("add rule inet chaos input ip saddr {y} drop"),
                        format!("add rule inet chaos output ip daddr {y} drop"),
                    ] {
                        run("ip", &["netns", "exec", &x.ns, "nft", &rule]);
                    }
                }
            }
        }
    }

    /// Removes every drop rule: the network is whole again.
    pub fn heal(&self) {
        for h in self.hosts.lock().unwrap().iter() {
            for chain in ["input", "output"] {
                run(
                    "ip",
                    &[
                        "netns", "exec", &h.ns, "nft", "flush", "chain", "inet", "chaos", chain,
                    ],
                );
            }
        }
    }

    /// The drop rules of host `name`, as nft lists them (for a failing test's message).
    pub fn rules(&self, name: &str) -> String {
        let h = self.find(name);
        let out = Command::new("ip")
            .args(["netns", "exec", &h.ns, "nft", "list", "table", "inet", "chaos"])
            .output()
            .expect("nft list");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in self.hosts.lock().unwrap().iter() {
            try_run("ip", &["netns", "del", &h.ns]);
            try_run("ip", &["link", "del", &h.ns]);
        }
        try_run("ip", &["link", "del", BRIDGE]);
    }
}

/// `ip netns exec <ns> <program> <args...>`: how a process is started inside a host.
pub fn exec_in(host: &Host, program: &std::path::Path, args: &[String]) -> (std::path::PathBuf, Vec<String>) {
    let mut all = vec!["netns".to_string(), "exec".to_string(), host.ns.clone()];
    all.push(program.display().to_string());
    all.extend(args.iter().cloned());
    (std::path::PathBuf::from("ip"), all)
}

/// An address of a host, with a port.
pub fn addr(host: &Host, port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(IpAddr::V4(host.ip), port)
}
