//! A throwaway PostgreSQL cluster on a free port, for tests that must stop
//! and restart the database under the service.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::process::free_addr;
use crate::support::rand_u64;

/// `initdb`, `pg_ctl` and friends of the newest installed PostgreSQL.
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|dir| dir.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("an initdb")
}

/// A cluster owned by the test, stopped and deleted on drop. PostgreSQL
/// refuses to run as root, so as root the cluster runs as `postgres`.
pub struct TempCluster {
    dir: PathBuf,
    pub port: u16,
}

impl TempCluster {
    /// Creates and starts a cluster; `conf` is appended to postgresql.conf.
    pub fn start(conf: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bh-cluster-{:016x}", rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self { dir, port: 0 };
        hand_over(&cluster.dir);
        cluster.run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "--no-sync", "-D"],
            true,
        );
        cluster.configure(&format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 60\n{conf}\n",
            cluster.dir.display()
        ));
        cluster.start_on_a_free_port();
        cluster
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started.
    pub fn standby_of(primary: &TempCluster) -> Self {
        let dir = std::env::temp_dir().join(format!("bh-cluster-{:016x}", rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut standby = Self { dir, port: 0 };
        hand_over(&standby.dir);
        let port = primary.port.to_string();
        standby.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-D",
            ],
            true,
        );
        // The copied configuration names the primary's port and sockets.
        standby.configure(&format!(
            "unix_socket_directories = '{}'\n",
            standby.dir.display()
        ));
        standby.start_on_a_free_port();
        standby
    }

    /// Stops the server as a crash would: no shutdown checkpoint, clients cut off.
    pub fn kill(&self) {
        self.run("pg_ctl", &["stop", "-m", "immediate", "-w", "-D"], true);
    }

    /// Promotes a standby to primary, waiting until it accepts writes.
    pub fn promote(&self) {
        self.run("pg_ctl", &["promote", "-w", "-D"], true);
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops the server the way an operator's restart does.
    pub fn stop(&self) {
        self.run("pg_ctl", &["stop", "-m", "fast", "-w", "-D"], true);
    }

    /// Freezes every process of the server (SIGSTOP), as a hung host does:
    /// connections stay open and nothing answers.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let postmaster = pid.lines().next().unwrap().trim().to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .unwrap();
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pids:?}");
    }

    /// Starts the (stopped) server again.
    pub fn resume(&self) {
        let output = self.start_server();
        assert!(
            output.status.success(),
            "pg_ctl start: {}",
            self.server_log()
        );
    }

    /// Appends `settings` to postgresql.conf (the last of a setting wins).
    fn configure(&self, settings: &str) {
        let config = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(settings);
        std::fs::write(&config, text).unwrap();
    }

    /// Starts the server on a port that was free a moment before. Anyone
    /// may take it meanwhile (a test binding port 0, an outgoing
    /// connection), so a start that finds it taken tries another.
    fn start_on_a_free_port(&mut self) {
        for _ in 0..3 {
            self.port = free_addr().port();
            self.configure(&format!("port = {}\n", self.port));
            if self.start_server().status.success() {
                return;
            }
            let log = self.server_log();
            assert!(
                log.contains("Address already in use"),
                "pg_ctl start: {log}"
            );
        }
        panic!("three free ports were taken before the server bound them");
    }

    fn start_server(&self) -> std::process::Output {
        let log = format!("{}", self.dir.join("server.log").display());
        let mut command = tool("pg_ctl");
        command
            .args(["start", "-w", "-l", &log, "-D"])
            .arg(self.data());
        command.output().expect("PostgreSQL tools run")
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A connection config for database `dbname` on this cluster.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(dbname);
        config
    }

    /// A connection to database `dbname` on this cluster.
    pub async fn client(&self, dbname: &str) -> tokio_postgres::Client {
        crate::support::connect(&self.config(dbname)).await
    }

    fn run(&self, program: &str, args: &[&str], with_data_dir: bool) {
        let mut command = tool(program);
        command.args(args);
        if with_data_dir {
            command.arg(self.data());
        }
        let output = command.output().expect("PostgreSQL tools run");
        assert!(
            output.status.success(),
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `program` of the PostgreSQL server binaries, run as `postgres` when this
/// process is root (PostgreSQL refuses to run as root).
fn tool(program: &str) -> Command {
    let program = bin_dir().join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = tool("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.data())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes `path` the cluster user's, when running as root.
pub fn hand_over(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}
