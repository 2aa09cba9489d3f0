//! A PgBouncer of the test's own, in front of the test server, started by
//! the same script `.ci/run` uses.

use std::{path::PathBuf, process::Command};

use tokio_postgres::config::Host;

use crate::support::{admin_config, process::free_addr, rand_u64};

/// A running PgBouncer, stopped on drop.
pub struct PgBouncer {
    dir: PathBuf,
    pub port: u16,
}

impl PgBouncer {
    /// Starts one in `pool_mode` (`transaction`, `session`).
    pub fn start(pool_mode: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pgbouncer-{:016x}", rand_u64()));
        let port = free_addr().port();
        let admin = admin_config();
        let upstream_host = match admin.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => "127.0.0.1".into(),
        };
        let upstream_port = admin.get_ports().first().copied().unwrap_or(5432);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pgbouncer/start.sh");
        let status = Command::new(script)
            .args([&port.to_string(), &dir.display().to_string(), pool_mode])
            .env("UPSTREAM_HOST", upstream_host)
            .env("UPSTREAM_PORT", upstream_port.to_string())
            .status()
            .expect("cannot run tests/pgbouncer/start.sh");
        assert!(
            status.success(),
            "PgBouncer did not start (is it installed? .ci/run installs it)"
        );
        Self { dir, port }
    }

    /// `database`'s URL through this PgBouncer.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new(self.dir.join("stop.sh")).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
