//! A throwaway etcd cluster (Debian's `etcd-server`, 3.4): `n` members on 127.0.0.1 with free
//! client and peer ports, one data directory each, heartbeat and election timeouts raised so a
//! loaded 2-core machine does not cause elections. Members can be killed, restarted, paused.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{free_port, on_exit};

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    token: String,
    extra: Vec<String>,
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
    /// Starts `n` members and waits until every one is healthy. `extra` flags go to every
    /// member (e.g. compaction and quota settings).
    pub fn start(n: usize, extra: &[&str]) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("ortelius-etcd-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let members: Vec<Member> = (1..=n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: dir.path().join(format!("m{i}")),
                child: Mutex::new(None),
            })
            .collect();
        let cluster = EtcdCluster {
            token: format!("ortelius-test-{}", dir.path().display()),
            dir,
            members,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        on_exit(&format!(
            "pkill -9 -f {}; rm -rf {}",
            cluster.dir.path().display(),
            cluster.dir.path().display()
        ));
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>(), Duration::from_secs(60));
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&self, i: usize) {
        let m = &self.members[i];
        let state = if m.data.exists() { "existing" } else { "new" };
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("cannot create the member log");
        let child = Command::new(binary("etcd"))
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client_port),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client_port),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
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
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
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
                panic!("etcd members {members:?} are not healthy after {within:?}:\n{logs}");
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
    }
}
