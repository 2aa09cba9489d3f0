//! The real binary as a child process, started the way an operator would.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::support::rand_u64;

/// A `batch-history serve` process whose logs go to a file.
pub struct ServerProcess {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `serve` on a free loopback port with `env` added.
    pub fn spawn(env: &[(&str, &str)]) -> Self {
        let addr = free_addr();
        let log = std::env::temp_dir().join(format!("bh-server-{:016x}.log", rand_u64()));
        let child = Command::new(env!("CARGO_BIN_EXE_batch-history"))
            .arg("serve")
            .env_remove("RUST_LOG")
            .env("LISTEN_ADDR", addr.to_string())
            .env("LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("cannot start batch-history");
        Self { addr, child, log }
    }

    /// Waits until the healthcheck command passes, or panics with the logs.
    pub fn wait_serving(&mut self, within: Duration) {
        self.wait_healthy(within, &[]);
    }

    /// Whether `healthcheck` with `args` added passes now.
    pub fn healthcheck(&self, args: &[&str]) -> bool {
        Command::new(env!("CARGO_BIN_EXE_batch-history"))
            .args(["healthcheck", "--timeout-ms", "1000", "--addr"])
            .arg(self.addr.to_string())
            .args(args)
            .output()
            .expect("healthcheck runs")
            .status
            .success()
    }

    /// Waits until `healthcheck` with `args` added passes, or panics.
    pub fn wait_healthy(&mut self, within: Duration, args: &[&str]) {
        let deadline = Instant::now() + within;
        loop {
            if self.healthcheck(args) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited with {status}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "not SERVING in time:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }

    /// Waits for the process to exit, or panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A loopback address nothing listens on (bound, noted, released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        Self(std::env::temp_dir().join(format!("{prefix}-{:016x}", rand_u64())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
