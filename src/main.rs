use std::{process::ExitCode, time::Duration};

use batch_history::cli::{Cli, Command, start_unless_configured};
use batch_history::config::{ImportConfig, ServeConfig};
use batch_history::local_cluster::LocalCluster;
use batch_history::startup::{App, shutdown_signal};
use batch_history::store::DatabaseConfig;
use batch_history::telemetry::{self, LogFormat, OtlpConfig, cause_chain};
use batch_history::{health_client, import, store};
use clap::Parser;

/// A page of full batches is thousands of small allocations (strings, JSON
/// maps), freed as soon as it is sent; mimalloc's per-thread free lists
/// serve that pattern at a fraction of glibc's cost (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format.unwrap_or_else(LogFormat::for_stderr);
    let otlp = OtlpConfig::from_env(|name| std::env::var(name).ok());
    telemetry::init(log_format, otlp.as_ref().ok().cloned().flatten());
    let outcome = match otlp {
        Ok(_) => run(cli.command).await,
        Err(error) => Err(error.into()),
    };
    telemetry::otlp::flush(Duration::from_secs(2)).await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let cause = cause_chain(error.as_ref());
            match log_format {
                // One sentence for a person, not a log record.
                LogFormat::Pretty => eprintln!("batch-history: {cause}"),
                LogFormat::Json => tracing::error!(error = %cause, "exiting"),
            }
            ExitCode::FAILURE
        }
    }
}

type Failure = Box<dyn std::error::Error>;

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(mut args) => {
            // Listening from the start: a SIGTERM while starting stops it gracefully.
            let stop = shutdown_signal();
            let cluster = start_unless_configured(&mut args.database).await?;
            let served = async {
                let config = ServeConfig::try_from(args)?;
                let mut stop = std::pin::pin!(stop);
                // Stopped while still starting (waiting for the database):
                // nothing is served yet, so nothing needs draining.
                let app = tokio::select! {
                    app = App::build(config) => app?,
                    () = &mut stop => return Ok(()),
                };
                Ok::<_, Failure>(app.run_until_stopped(stop).await?)
            };
            finish(served.await, cluster).await?;
        }
        Command::Migrate(mut args) => {
            let cluster = start_unless_configured(&mut args).await?;
            let migrated = async {
                let config = DatabaseConfig::try_from(args)?;
                store::set_up(&config).await?;
                Ok(())
            };
            finish(migrated.await, cluster).await?;
        }
        Command::Healthcheck(args) => {
            let tls = args.tls_ca_file.map(|ca_file| health_client::ClientTls {
                ca_file,
                identity: args.tls_cert_file.zip(args.tls_key_file),
                server_name: args.tls_server_name,
            });
            let timeout = Duration::from_millis(args.timeout_ms);
            health_client::check(&args.addr, timeout, tls.as_ref()).await?;
        }
        Command::ImportSqlite(mut args) => {
            let cluster = start_unless_configured(&mut args.database).await?;
            let imported = async {
                let config = ImportConfig::try_from(args)?;
                let report = import::import_history(&config.options, &config.database).await?;
                if config.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{}", report.to_text());
                }
                if !report.succeeded() {
                    return Err("the import was refused; see the report".into());
                }
                Ok(())
            };
            finish(imported.await, cluster).await?;
        }
    }
    Ok(())
}

/// Stops the private cluster, if this command started one, whatever the
/// command's outcome.
async fn finish(
    outcome: Result<(), Failure>,
    cluster: Option<LocalCluster>,
) -> Result<(), Failure> {
    let stopped = match cluster {
        Some(cluster) => cluster.stop().await,
        None => Ok(()),
    };
    outcome?;
    Ok(stopped?)
}
