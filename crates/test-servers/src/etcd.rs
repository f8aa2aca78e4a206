//! A throwaway etcd cluster (Debian's `etcd-server`, 3.4): `n` members with free client and
//! peer ports, one data directory each, heartbeat and election timeouts raised so a loaded
//! 2-core machine does not cause elections. Members can be killed, restarted, paused — and,
//! in a cluster started with [`EtcdOptions::partitionable`], cut off from the network: each
//! member then runs in its own network namespace (`ip netns`, needs root), attached to a bridge
//! in this one, and a partition takes its link down. A cluster can also be rebuilt from a
//! snapshot file (`etcdctl snapshot restore`, with a new cluster token).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{disk_space, free_port, on_exit};

struct Member {
    name: String,
    /// The address it listens on: 127.0.0.1, or its own in a network namespace.
    host: String,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    child: Mutex<Option<Child>>,
}

/// The network namespaces of a partitionable cluster.
struct Network {
    bridge: String,
    /// Per member: its namespace and the bridge side of its link.
    links: Vec<(String, String)>,
}

/// How to start a cluster.
#[derive(Clone, Default)]
pub struct EtcdOptions<'a> {
    pub members: usize,
    /// Flags for every member (e.g. compaction and quota settings).
    pub extra: &'a [&'a str],
    /// Each member in its own network namespace, so the test can partition it.
    pub partitionable: bool,
    /// Rebuild the members' data from this snapshot file, with a new cluster token.
    pub from_snapshot: Option<&'a Path>,
    /// Called before the members start, once their names, peer URLs and data directories
    /// ([`EtcdCluster::members`]) are fixed: it may build their data directories (a restore
    /// that rebuilds a cluster).
    pub before_start: Option<&'a dyn Fn(&EtcdCluster)>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    token: String,
    extra: Vec<String>,
    network: Option<Network>,
}

fn run(what: &str, command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args),
    );
}

impl Network {
    /// One namespace per member, linked to a new bridge; member i gets `<subnet>.<i+1>`.
    fn create(n: usize) -> (Network, String) {
        assert!(
            crate::is_root(),
            "a partitionable etcd cluster needs root (network namespaces); run the tests as root"
        );
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{k}", pid % 100_000);
        let subnet = format!("10.{}.{}", 200 + (k % 50), pid % 250);
        let bridge = format!("obr{tag}");
        let mut network = Network {
            bridge: bridge.clone(),
            links: Vec::new(),
        };
        on_exit(&network.cleanup_script(n, &tag));
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..n {
            let ns = format!("ortelius-etcd-{tag}-{i}");
            let link = format!("ov{tag}m{i}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &link, "master", &bridge]);
            ip(&["link", "set", &link, "up"]);
            let addr = format!("{subnet}.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            network.links.push((ns, link));
        }
        (network, subnet)
    }

    fn cleanup_script(&self, n: usize, tag: &str) -> String {
        let namespaces: Vec<String> = (0..n)
            .map(|i| format!("ip netns del ortelius-etcd-{tag}-{i} 2>/dev/null"))
            .collect();
        format!(
            "{}; ip link del {} 2>/dev/null",
            namespaces.join("; "),
            self.bridge
        )
    }

    fn remove(&self) {
        for (ns, _) in &self.links {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn binary(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} not found: install etcd-server and etcd-client (scripts/install-deps.sh does)");
}

impl EtcdCluster {
    /// Starts `n` members on 127.0.0.1 and waits until every one is healthy. `extra` flags go
    /// to every member (e.g. compaction and quota settings).
    pub fn start(n: usize, extra: &[&str]) -> EtcdCluster {
        Self::start_with(&EtcdOptions {
            members: n,
            extra,
            ..EtcdOptions::default()
        })
    }

    /// Starts a cluster as `options` say and waits until every member is healthy.
    pub fn start_with(options: &EtcdOptions<'_>) -> EtcdCluster {
        let n = options.members;
        let dir = tempfile::Builder::new()
            .prefix("ortelius-etcd-")
            .tempdir()
            .expect("cannot create a temporary directory");
        on_exit(&format!(
            "pkill -9 -f {}; rm -rf {}",
            dir.path().display(),
            dir.path().display()
        ));
        let (network, hosts) = if options.partitionable {
            let (network, subnet) = Network::create(n);
            let hosts = (1..=n).map(|i| format!("{subnet}.{i}")).collect();
            (Some(network), hosts)
        } else {
            (None, vec!["127.0.0.1".to_owned(); n])
        };
        // In a namespace of its own every member can use the same ports.
        let shared_ports = options.partitionable.then(|| (free_port(), free_port()));
        let members: Vec<Member> = hosts
            .into_iter()
            .enumerate()
            .map(|(i, host)| {
                let (client_port, peer_port) =
                    shared_ports.unwrap_or_else(|| (free_port(), free_port()));
                Member {
                    name: format!("m{}", i + 1),
                    host,
                    client_port,
                    peer_port,
                    data: dir.path().join(format!("m{}", i + 1)),
                    child: Mutex::new(None),
                }
            })
            .collect();
        let restored = if options.from_snapshot.is_some() {
            "restored"
        } else {
            "test"
        };
        let cluster = EtcdCluster {
            token: format!("ortelius-{restored}-{}", dir.path().display()),
            dir,
            members,
            extra: options.extra.iter().map(|s| (*s).to_owned()).collect(),
            network,
        };
        if let Some(snapshot) = options.from_snapshot {
            for i in 0..n {
                cluster.restore_member(i, snapshot);
            }
        }
        if let Some(before_start) = options.before_start {
            before_start(&cluster);
        }
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>(), Duration::from_secs(60));
        cluster
    }

    fn peer_url(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("http://{}:{}", m.host, m.peer_port)
    }

    fn initial_cluster(&self) -> String {
        (0..self.members.len())
            .map(|i| format!("{}={}", self.members[i].name, self.peer_url(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl snapshot restore` of `snapshot` into member `i`'s (new) data directory, with
    /// this cluster's (new) token: the physical restore of a lost cluster.
    fn restore_member(&self, i: usize, snapshot: &Path) {
        let m = &self.members[i];
        run(
            "etcdctl snapshot restore",
            Command::new(binary("etcdctl"))
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(snapshot)
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(&m.data)
                .args([
                    "--initial-cluster",
                    &self.initial_cluster(),
                    "--initial-cluster-token",
                    &self.token,
                    "--initial-advertise-peer-urls",
                    &self.peer_url(i),
                ]),
        );
    }

    /// Each member's name, peer URL and data directory.
    pub fn members(&self) -> Vec<(String, String, PathBuf)> {
        (0..self.members.len())
            .map(|i| {
                let m = &self.members[i];
                (m.name.clone(), self.peer_url(i), m.data.clone())
            })
            .collect()
    }

    /// The cluster token new members are started with.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn spawn(&self, i: usize) {
        let m = &self.members[i];
        let state = if m.data.exists() { "existing" } else { "new" };
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("cannot create the member log");
        let mut command = match &self.network {
            Some(network) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &network.links[i].0, &binary("etcd")]);
                c
            }
            None => Command::new(binary("etcd")),
        };
        let client_url = format!("http://{}:{}", m.host, m.client_port);
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &self.peer_url(i),
                "--initial-advertise-peer-urls",
                &self.peer_url(i),
                "--initial-cluster",
                &self.initial_cluster(),
                "--initial-cluster-token",
                &self.token,
                "--initial-cluster-state",
                state,
                "--heartbeat-interval",
                "250",
                "--election-timeout",
                "2500",
                "--logger",
                "zap",
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        *m.child.lock().unwrap() = Some(child);
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("http://{}:{}", m.host, m.client_port)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Runs `etcdctl` (API v3) against the given members.
    pub fn etcdctl(&self, members: &[usize], args: &[&str]) -> Output {
        let endpoints: Vec<String> = members.iter().map(|&i| self.endpoint(i)).collect();
        Command::new(binary("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--command-timeout=5s", "--dial-timeout=3s"])
            .args(args)
            .output()
            .expect("etcdctl runs")
    }

    /// Waits until each of `members` reports healthy; panics with their logs otherwise.
    pub fn wait_healthy(&self, members: &[usize], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let healthy = members
                .iter()
                .all(|&i| self.etcdctl(&[i], &["endpoint", "health"]).status.success());
            if healthy {
                return;
            }
            if Instant::now() >= deadline {
                let logs: String = members
                    .iter()
                    .map(|&i| {
                        let name = &self.members[i].name;
                        let log =
                            std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                                .unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(20).collect();
                        format!(
                            "--- {name}\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!(
                    "etcd members {members:?} are not healthy after {within:?} ({}):\n{logs}",
                    disk_space(self.dir.path())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The index of the current leader, if any member knows one.
    pub fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            let out = self.etcdctl(&[i], &["endpoint", "status", "--write-out=json"]);
            if !out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            // {"Status":{"header":{"member_id":X,...},"leader":Y,...}}
            let find = |key: &str| -> Option<u64> {
                let at = text.find(key)? + key.len();
                let digits: String = text[at..]
                    .chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            };
            if let (Some(member), Some(leader)) = (find("\"member_id\":"), find("\"leader\":")) {
                if member == leader {
                    return Some(i);
                }
            }
        }
        None
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = self.members[i].child.lock().unwrap().as_ref() {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .output();
        }
    }

    /// `kill -9` of member `i`.
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.members[i].child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again (after `kill`) and waits until it is healthy.
    pub fn restart(&self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(&[i], Duration::from_secs(60));
    }

    /// Freezes member `i` (SIGSTOP) / thaws it (SIGCONT).
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Cuts member `i` off the network (its link goes down: packets to and from it are lost,
    /// as in a real partition). Only in a partitionable cluster.
    pub fn partition(&self, i: usize) {
        ip(&["link", "set", &self.link(i), "down"]);
    }

    /// Reconnects member `i`.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.link(i), "up"]);
    }

    fn link(&self, i: usize) -> String {
        let network = self
            .network
            .as_ref()
            .expect("only a cluster started with `partitionable` can be partitioned");
        network.links[i].1.clone()
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.members[i].data.clone()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.resume(i);
            self.kill(i);
        }
        if let Some(network) = &self.network {
            network.remove();
        }
    }
}
