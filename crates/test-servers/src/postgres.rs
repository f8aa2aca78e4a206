//! A throwaway PostgreSQL 15 server: `initdb` with password authentication into a temporary
//! directory (as the `postgres` user when the tests run as root: `initdb` refuses root), a free
//! port on 127.0.0.1, fsync on, and a database `ortelius`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{disk_space, free_port, is_root, on_exit};

pub const USER: &str = "ortelius";
pub const PASSWORD: &str = "test-secret";
pub const DATABASE: &str = "ortelius";

/// A running PostgreSQL server.
pub struct Postgres {
    pub host: String,
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
}

fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    for version in ["17", "16", "15", "14"] {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!("no PostgreSQL server binaries (initdb) found: install postgresql (scripts/install-deps.sh does)");
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// One server shared by every test of this test binary.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// A private server (for tests that stop, restart or kill it).
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("ortelius-pg-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            // initdb runs as another user: it must reach and own its directories.
            let exists = Command::new("id")
                .arg(user)
                .output()
                .map(|o| o.status.success());
            if !matches!(exists, Ok(true)) {
                check(
                    "useradd",
                    &Command::new("useradd")
                        .args(["--system", "--no-create-home", user])
                        .output()
                        .expect("useradd runs"),
                );
            }
            check(
                "chmod",
                &Command::new("chmod")
                    .arg("755")
                    .arg(dir.path())
                    .output()
                    .expect("chmod runs"),
            );
            check(
                "chown",
                &Command::new("chown")
                    .args(["-R", &format!("{user}:")])
                    .arg(dir.path())
                    .output()
                    .expect("chown runs"),
            );
        }
        let server = Postgres {
            host: "127.0.0.1".to_owned(),
            port: free_port(),
            dir,
            bin,
            run_as,
        };
        let pwfile = server.dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).expect("cannot write the password file");
        server.chown(&pwfile);
        let data = server.data();
        let out = server.as_user(&server.bin.join("initdb"), |c| {
            c.arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    USER,
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                ])
                .arg(format!("--pwfile={}", pwfile.display()));
        });
        check("initdb", &out);
        server.start_server();
        on_exit(&server.stop_command());
        server.psql("postgres", &format!("CREATE DATABASE {DATABASE}"));
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn chown(&self, path: &Path) {
        if let Some(user) = &self.run_as {
            let _ = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(path)
                .output();
        }
    }

    fn as_user(&self, program: &Path, args: impl FnOnce(&mut Command)) -> Output {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        args(&mut cmd);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        self.as_user(&self.bin.join("pg_ctl"), |c| {
            c.arg("-D").arg(&data).arg("-l").arg(&log).args(args);
        })
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        // After a kill -9 the old backends may hold the shared memory for a moment.
        let mut out = self.pg_ctl(&["-w", "-t", "60", "-o", &options, "start"]);
        for _ in 0..20 {
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            out = self.pg_ctl(&["-w", "-t", "60", "-o", &options, "start"]);
        }
        if !out.status.success() {
            panic!(
                "PostgreSQL did not start on port {} ({}): {}\n{}\nserver log:\n{}",
                self.port,
                disk_space(self.dir.path()),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
    }

    fn stop_command(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = format!(
            "{} -D {} stop -m immediate",
            pg_ctl.display(),
            self.data().display()
        );
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- {stop}"),
            None => stop,
        };
        format!("{stop}; rm -rf {}", self.dir.path().display())
    }

    /// The server log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs SQL as the superuser in `database`; panics on failure.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .env("PGPASSWORD", PASSWORD)
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql runs");
        check(&format!("psql {sql:?}"), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fast shutdown (like a restart of the machine's service).
    pub fn stop(&self) {
        check("pg_ctl stop", &self.pg_ctl(&["-w", "-m", "fast", "stop"]));
    }

    /// Starts it again after [`stop`](Self::stop) or [`kill`](Self::kill).
    pub fn restart(&self) {
        self.start_server();
    }

    /// `kill -9` of the server's postmaster (crash recovery runs on the next start).
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .expect("the server is running (postmaster.pid)");
        check(
            "kill -9",
            &Command::new("kill")
                .args(["-9", &pid])
                .output()
                .expect("kill runs"),
        );
        // Wait for the postmaster to be gone before anyone restarts it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Command::new("kill")
            .args(["-0", &pid])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "postmaster {pid} survived kill -9"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its children (backends) exit once they notice; the next start waits for them.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Where the binaries are (pg_dump, pg_restore, ...).
    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}
