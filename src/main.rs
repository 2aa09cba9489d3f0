use std::{process::ExitCode, time::Duration};

use batch_history::config::{Cli, Command, DatabaseConfig, ImportConfig, ServeConfig};
use batch_history::startup::{App, shutdown_signal};
use batch_history::telemetry::{self, cause_chain};
use batch_history::{healthcheck, import, store};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %cause_chain(error.as_ref()), "exiting");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve(args) => {
            let app = App::build(ServeConfig::try_from(args)?).await?;
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Migrate(args) => {
            let config = DatabaseConfig::try_from(args)?;
            let applied = store::migrate(&config.pg, config.timeout).await?;
            tracing::info!(?applied, "schema up to date");
        }
        Command::Healthcheck(args) => {
            let tls = args.tls_ca_file.map(|ca_file| healthcheck::ClientTls {
                ca_file,
                identity: args.tls_cert_file.zip(args.tls_key_file),
                server_name: args.tls_server_name,
            });
            let timeout = Duration::from_millis(args.timeout_ms);
            healthcheck::check(&args.addr, timeout, tls.as_ref()).await?;
        }
        Command::ImportSqlite(args) => {
            let config = ImportConfig::try_from(args)?;
            let report = import::import_sqlite(&config.options, &config.database).await?;
            if config.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.succeeded() {
                return Err("the import was refused; see the report".into());
            }
        }
    }
    Ok(())
}
