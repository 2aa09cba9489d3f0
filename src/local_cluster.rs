//! The development default: with no `DATABASE_URL`, a private PostgreSQL
//! cluster made from the server binaries already on the machine, in a data
//! directory of its own, reached over a Unix socket in that directory (no
//! TCP port, no password). Nothing is downloaded. It is created on first
//! use, reused after, and stopped by whoever started it.

use std::{
    ffi::OsStr,
    io,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

/// The superuser the cluster is created with, and the database used.
const SUPERUSER: &str = "postgres";

/// Why the private cluster cannot run, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error(
        "DATABASE_URL is not set, and no PostgreSQL server binaries (initdb, pg_ctl) were found \
         through pg_config, PATH, /usr/lib/postgresql/*/bin, /usr/local/pgsql/bin or Homebrew: \
         install PostgreSQL (apt install postgresql, brew install postgresql@15) to get a \
         private development database, or set DATABASE_URL"
    )]
    NoBinaries,
    #[error(
        "PostgreSQL refuses to run as root, and there is no `postgres` user to run the private \
         development database as: run batch-history as an ordinary user, or set DATABASE_URL"
    )]
    RootWithoutPostgresUser,
    #[error("cannot prepare the data directory {path:?}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}); its output: {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
}

/// A running private cluster.
#[derive(Debug)]
pub struct LocalCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    owner: Option<Account>,
    /// Whether this process started the server, and so stops it.
    started_here: bool,
}

/// The user the cluster runs as when this process is root.
#[derive(Debug, Clone)]
struct Account {
    uid: u32,
    gid: u32,
}

impl LocalCluster {
    /// The data directory used when none is given: `$XDG_DATA_HOME` (or
    /// `~/.local/share`)`/batch-history/postgres`, or for root, whose home
    /// the `postgres` user cannot enter, `/var/lib/batch-history/postgres`.
    pub(crate) fn default_data_dir() -> PathBuf {
        let base = if is_root() {
            PathBuf::from("/var/lib")
        } else if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            PathBuf::from(data)
        } else {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".local/share")
        };
        base.join("batch-history/postgres")
    }

    /// Creates the cluster in `data_dir` if it holds none, and starts it
    /// unless it is running already.
    pub(crate) async fn start(data_dir: PathBuf) -> Result<Self, LocalClusterError> {
        tokio::task::spawn_blocking(move || Self::start_blocking(data_dir))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// [`LocalCluster::start`], for callers outside an async runtime.
    pub fn start_blocking(data_dir: PathBuf) -> Result<Self, LocalClusterError> {
        // The socket directory, and the host clients name, must be absolute.
        let data_dir =
            std::path::absolute(&data_dir).map_err(|source| LocalClusterError::DataDir {
                path: data_dir,
                source,
            })?;
        let bin_dir = find_bin_dir().ok_or(LocalClusterError::NoBinaries)?;
        let owner = if is_root() {
            Some(account(SUPERUSER).ok_or(LocalClusterError::RootWithoutPostgresUser)?)
        } else {
            None
        };
        let mut cluster = Self {
            bin_dir,
            data_dir,
            owner,
            started_here: false,
        };
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.create()?;
        }
        if !cluster.is_running() {
            let log = cluster.data_dir.join("server.log");
            let data = cluster.data_dir.as_os_str();
            let args = ["start", "-w", "-t", "60", "-s", "-l"].map(OsStr::new);
            cluster.run(
                "pg_ctl",
                args.iter()
                    .copied()
                    .chain([log.as_os_str(), "-D".as_ref(), data]),
            )?;
            cluster.started_here = true;
        }
        Ok(cluster)
    }

    /// Where the data is, and where the server's socket is.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The cluster's `postgres` database over its socket, as libpq
    /// key-value settings (which `DATABASE_URL` accepts too).
    pub fn connection_string(&self) -> String {
        let quoted = self
            .data_dir
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('\'', "\\'");
        format!("host='{quoted}' user={SUPERUSER} dbname={SUPERUSER}")
    }

    /// Stops the server if this process started it.
    pub async fn stop(self) -> Result<(), LocalClusterError> {
        if !self.started_here {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            let args = ["stop", "-w", "-s", "-m", "fast", "-D"].map(OsStr::new);
            self.run(
                "pg_ctl",
                args.iter().copied().chain([self.data_dir.as_os_str()]),
            )
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// `initdb`, then settings that keep the server off the network.
    fn create(&self) -> Result<(), LocalClusterError> {
        let prepare = || -> io::Result<()> {
            std::fs::create_dir_all(&self.data_dir)?;
            std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some(owner) = &self.owner {
                std::os::unix::fs::chown(&self.data_dir, Some(owner.uid), Some(owner.gid))?;
            }
            Ok(())
        };
        prepare().map_err(|source| LocalClusterError::DataDir {
            path: self.data_dir.clone(),
            source,
        })?;
        let superuser = format!("--username={SUPERUSER}");
        let args = [
            "--auth=trust",
            &superuser,
            "--encoding=UTF8",
            "--locale=C",
            "-D",
        ];
        self.run(
            "initdb",
            args.map(OsStr::new)
                .into_iter()
                .chain([self.data_dir.as_os_str()]),
        )?;
        let settings = format!(
            "\n# batch-history's private development cluster: a socket in the data\n\
             # directory, no TCP.\nlisten_addresses = ''\nunix_socket_directories = '{}'\n",
            self.data_dir.display().to_string().replace('\'', "''")
        );
        let config = self.data_dir.join("postgresql.conf");
        let append = || -> io::Result<()> {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&config)?
                .write_all(settings.as_bytes())
        };
        append().map_err(|source| LocalClusterError::DataDir {
            path: config.clone(),
            source,
        })
    }

    fn is_running(&self) -> bool {
        self.command(
            "pg_ctl",
            ["status".as_ref(), "-D".as_ref(), self.data_dir.as_os_str()],
        )
        .output()
        .is_ok_and(|output| output.status.success())
    }

    /// Runs `program`, one of the cluster's binaries, and turns a failure
    /// into an error that quotes what it printed.
    fn run<'a>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = &'a OsStr>,
    ) -> Result<(), LocalClusterError> {
        let mut command = self.command(program, args);
        let shown = format!(
            "{program} {}",
            command
                .get_args()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let output = command
            .output()
            .map_err(|source| LocalClusterError::Spawn {
                command: shown.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if text.is_empty() {
            text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        Err(LocalClusterError::Command {
            command: shown,
            status: output.status.to_string(),
            output: text,
        })
    }

    fn command<'a>(&self, program: &str, args: impl IntoIterator<Item = &'a OsStr>) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.args(args).env_remove("PGDATA");
        if let Some(owner) = &self.owner {
            command.uid(owner.uid).gid(owner.gid).current_dir("/");
        }
        command
    }
}

/// The directory holding `initdb` and `pg_ctl`, if any of
/// [`bin_dir_candidates`] does.
fn find_bin_dir() -> Option<PathBuf> {
    first_with_server(bin_dir_candidates())
}

/// The first of `dirs` that holds `initdb` and `pg_ctl`.
fn first_with_server(dirs: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    dirs.into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

/// Where server binaries may be: `pg_config --bindir`, then `PATH`, then
/// the usual install places, newest version first.
fn bin_dir_candidates() -> Vec<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    // Debian's /usr/lib/postgresql/15, Homebrew's postgresql@15.
    let mut versioned = Vec::new();
    for root in ["/usr/lib/postgresql", "/opt/homebrew/opt", "/usr/local/opt"] {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if root == "/usr/lib/postgresql" || name.starts_with("postgresql") {
                versioned.push((version_of(&name), entry.path().join("bin")));
            }
        }
    }
    versioned.sort();
    from_pg_config
        .into_iter()
        .chain(from_path)
        .chain(versioned.into_iter().rev().map(|(_, dir)| dir))
        .chain([PathBuf::from("/usr/local/pgsql/bin")])
        .collect()
}

/// The number in `15`, `postgresql@15` or `postgresql`, for ordering.
fn version_of(name: &str) -> u32 {
    name.trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of a process's /proc entry is its effective user.
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// The uid and gid of `name`, from /etc/passwd.
fn account(name: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next() != Some(name) {
            return None;
        }
        let mut ids = fields.skip(1).map(|id| id.parse().ok());
        Some(Account {
            uid: ids.next()??,
            gid: ids.next()??,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_server_binaries_the_error_names_the_fix() {
        let empty = std::env::temp_dir().join(format!("bh-no-bin-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert_eq!(first_with_server([empty.clone()]), None);
        let message = LocalClusterError::NoBinaries.to_string();
        assert!(message.contains("apt install postgresql"), "{message}");
        assert!(message.contains("set DATABASE_URL"), "{message}");

        for program in ["initdb", "pg_ctl"] {
            std::fs::write(empty.join(program), "").unwrap();
        }
        assert_eq!(
            first_with_server([PathBuf::from("/nonexistent"), empty.clone()]),
            Some(empty.clone())
        );
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn versions_order_install_directories() {
        assert_eq!(version_of("15"), 15);
        assert_eq!(version_of("postgresql@16"), 16);
        assert_eq!(version_of("postgresql"), 0);
    }
}
