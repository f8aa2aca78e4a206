//! A throwaway Apache Cassandra 5.0 cluster of 1 to 3 nodes, through `scripts/cassandra.sh`
//! (jars from Maven Central, node i on 127.0.0.i:9042, JMX on 127.0.0.1:7i00, everything of
//! node i under `<dir>/node<i>`), with ByteOrderedPartitioner.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::{disk_space, on_exit};

/// The cluster script of this repository, found from the directory of the package whose test
/// or bench is running (cargo sets `CARGO_MANIFEST_DIR` for them; every package is at
/// `crates/<name>`). Not from this crate's build-time path: a target directory shared between
/// checkouts can hold a build of this crate made in another checkout, maybe since deleted.
pub fn script() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../scripts/cassandra.sh")
}

fn run(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/cassandra.sh: {e}"))
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "scripts/cassandra.sh {what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running cluster.
pub struct CassandraCluster {
    dir: tempfile::TempDir,
    nodes: usize,
}

impl CassandraCluster {
    /// One single-node cluster shared by every test of this test binary.
    pub fn shared_single() -> &'static CassandraCluster {
        static SHARED: OnceLock<CassandraCluster> = OnceLock::new();
        SHARED.get_or_init(|| CassandraCluster::start(1))
    }

    /// Starts `nodes` nodes (fetching the jars first if needed) and waits until they all answer
    /// CQL and agree on the schema.
    pub fn start(nodes: usize) -> CassandraCluster {
        check("fetch", &run(&["fetch"]));
        let dir = tempfile::Builder::new()
            .prefix("ortelius-cassandra-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let d = dir.path().display().to_string();
        on_exit(&format!(
            "bash {} stop --dir {d} >/dev/null 2>&1; pkill -9 -f {d}; rm -rf {d}",
            script().display()
        ));
        let n = nodes.to_string();
        let started = run(&["start", "--dir", &d, "--nodes", &n]);
        if !started.status.success() {
            check(&format!("start ({})", disk_space(dir.path())), &started);
        }
        CassandraCluster { dir, nodes }
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    fn dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The CQL addresses of every node.
    pub fn servers(&self) -> Vec<String> {
        (1..=self.nodes)
            .map(|i| format!("127.0.0.{i}:9042"))
            .collect()
    }

    /// The command that runs nodetool against node `i` (1-based); its arguments follow.
    pub fn nodetool_command(&self, i: usize) -> Vec<String> {
        vec![
            "bash".to_owned(),
            script().display().to_string(),
            "nodetool".to_owned(),
            "--dir".to_owned(),
            self.dir(),
            "--node".to_owned(),
            i.to_string(),
            "--".to_owned(),
        ]
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}")).join("data")
    }

    /// Runs nodetool against node `i`; panics on failure.
    pub fn nodetool(&self, i: usize, args: &[&str]) -> String {
        let (node, dir) = (i.to_string(), self.dir());
        let mut all = vec![
            "nodetool",
            "--dir",
            dir.as_str(),
            "--node",
            node.as_str(),
            "--",
        ];
        all.extend_from_slice(args);
        let out = run(&all);
        check(&format!("nodetool {args:?}"), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kill -9` of node `i`.
    pub fn kill(&self, i: usize) {
        let (node, dir) = (i.to_string(), self.dir());
        check("kill", &run(&["kill", "--dir", &dir, "--node", &node]));
    }

    /// Starts node `i` again and waits for it.
    pub fn start_node(&self, i: usize) {
        let (node, dir) = (i.to_string(), self.dir());
        let started = run(&["start-node", "--dir", &dir, "--node", &node]);
        if !started.status.success() {
            check(
                &format!("start-node ({})", disk_space(self.dir.path())),
                &started,
            );
        }
    }

    /// Stops every node (total loss, when followed by dropping the cluster).
    pub fn stop(&self) {
        let dir = self.dir();
        let _ = run(&["stop", "--dir", &dir]);
    }
}

impl Drop for CassandraCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
