//! `ocomms-rt`: parses the configuration, starts the node, and stops it on SIGINT/SIGTERM.

use std::process::ExitCode;

use ocomms_rt::config::{Command, Config};
use ocomms_rt::node::Node;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let (command, config) = match Config::load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("ocomms-rt: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Migrate) = command {
        let Some(url) = config.database_url.as_deref() else {
            eprintln!(
                "ocomms-rt migrate: DATABASE_URL is not set; set it to the PostgreSQL database to migrate \
                 (the embedded store needs no migrations)"
            );
            return ExitCode::from(2);
        };
        return match ocomms_rt::store::pg::migrate(url) {
            Ok(applied) => {
                println!(
                    "ocomms-rt migrate: {applied} migration(s) applied; the schema is up to date"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ocomms-rt migrate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Register before starting threads, so a signal during start-up is not lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ocomms-rt: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = match Node::start(config) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("ocomms-rt: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    node.shutdown();
    ExitCode::SUCCESS
}
